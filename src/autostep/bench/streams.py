"""Where a benchmark run's data comes from: the training stream and the probe stream of a seed.

Both are :meth:`Task.batches <autostep.bench.tasks.Task.batches>` from their own generator seeds, so
a method that evaluates extra batches (AutoLR's superbatch, an LR search, a probe set) never shifts
the training stream every method sees for the same seed (paired comparisons).
"""

from __future__ import annotations

from typing import Iterator

from .tasks import Task

__all__ = ["TRAIN_SEED_OFFSET", "PROBE_SEED_OFFSET", "train_batches", "probe_batches"]

TRAIN_SEED_OFFSET = 10_000  # generator seed of run seed s's training batches: 10_000 + s
PROBE_SEED_OFFSET = 7919  # probe batches: 10_000 + 7919 + s


def train_batches(task: Task, steps: int, seed: int) -> Iterator[tuple]:
    """The ``steps`` training mini-batches of run seed ``seed``."""
    return task.batches(steps, TRAIN_SEED_OFFSET + seed)


def probe_batches(task: Task, n: int, seed: int) -> list:
    """``n`` batches for probes and selection (AutoLR's superbatch, LR searches), drawn independently
    of the training stream."""
    return task.batch_list(n, TRAIN_SEED_OFFSET + seed + PROBE_SEED_OFFSET)
