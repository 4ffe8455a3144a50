"""Mini-batches from tensors: seeded epochs of permutations, and fixed-size chunks.

Library code (the loss-along-lines diagnostic) and the bench tasks (``autostep.bench.tasks``) draw
their batches here, so the library never imports the tasks.
"""

from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["epoch_batches", "chunks"]


def epoch_batches(tensors: tuple, n: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple]:
    """``n`` mini-batches of rows of ``tensors`` (same first dimension), drawn epoch by epoch from
    permutations made with ``generator``; a last partial batch of an epoch is dropped."""
    size = len(tensors[0])
    perm, pos = torch.randperm(size, generator=generator), 0
    for _ in range(n):
        if pos + batch_size > size:
            perm, pos = torch.randperm(size, generator=generator), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        yield tuple(t[idx] for t in tensors)


def chunks(tensors: tuple, size: int) -> Iterator[tuple]:
    """Consecutive slices of at most ``size`` rows of ``tensors``, each with its row count:
    ``(*slices, rows)``."""
    total = len(tensors[0])
    for i in range(0, total, size):
        part = tuple(t[i:i + size] for t in tensors)
        yield (*part, len(part[0]))
