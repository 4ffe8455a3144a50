"""Suite-wide test settings."""

import multiprocessing.process
import subprocess

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


@pytest.fixture(autouse=True)
def _multi_process_tests_are_marked_slow(request, monkeypatch):
    """A test that starts a process (spawned ranks, a worker pool, a subprocess) must be marked
    ``slow``: starting Python and importing torch costs seconds, and ``-m "not slow"`` is the fast
    local run.  Unmarked tests get an error that says so instead of a process."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.slow "
                           "(multi-process tests run in CI, not in the fast local run)")

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
