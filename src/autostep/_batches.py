"""Mini-batches drawn epoch by epoch from in-memory tensors (used by ``lines`` and the bench tasks)."""

from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["epoch_batches"]


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
