"""Suite-wide test settings."""

import multiprocessing.process
import os
import subprocess
import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the suite's small models only get slower from thread contention on the
    2-core CI machine, and single-threaded kernels keep results reproducible across machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _starts_python(args) -> bool:
    program = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
    program = os.fsdecode(program).split()[0] if isinstance(args, (str, bytes)) else os.fsdecode(program)
    return program == sys.executable or os.path.basename(program).startswith("python")


@pytest.fixture(autouse=True)
def _multi_process_tests_are_marked_slow(request, monkeypatch):
    """A test that starts Python processes (spawned ranks, a worker pool, a Python subprocess) must
    be marked ``slow``: each costs seconds of interpreter start and imports, and ``-m "not slow"``
    is the fast local run.  Unmarked tests get an error that says so.  Other programs (``fc-list``,
    which matplotlib runs when it builds its font cache) are left alone."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse():
        raise RuntimeError(f"{request.node.nodeid} starts a Python process: mark it "
                           "@pytest.mark.slow (multi-process tests run in CI, not in the fast local run)")

    popen_init = subprocess.Popen.__init__

    def guarded_popen(self, args, *rest, **kwargs):
        if _starts_python(args):
            refuse()
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", lambda self: refuse())
    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen)
