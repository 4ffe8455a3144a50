"""Start the processes of the multi-process tests (two gloo ranks) from one fork server.

``torch.multiprocessing.spawn`` starts every rank as a fresh interpreter that imports torch and
autostep again (~2.5 s of CPU per rank, four launches in the suite).  Here the ranks are forked
from a fork server that imported both once per test session; each rank still gets a clean process
(not a fork of pytest, whose threads and state a fork would copy) and imports its test module.
"""

import multiprocessing
import os

import torch
import torch.multiprocessing as mp

_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload(["torch", "torch.distributed", "autostep"])


def spawn(fn, args=(), nprocs=2):
    """``torch.multiprocessing.spawn(fn, args, nprocs)``, with the ranks forked from the server:
    ``fn(rank, *args)`` in each; an exception in a rank is raised here."""
    mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")


def run(fn, out_dir):
    """Run ``fn(rank, 2, init_file, out_dir)`` on two ranks and return what each saved to
    ``out_dir/rank{r}.pt`` (the convention of the two-rank tests' workers), rank 0 first."""
    out_dir = str(out_dir)
    spawn(fn, args=(2, os.path.join(out_dir, "init"), out_dir))
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]
