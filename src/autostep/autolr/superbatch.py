"""Superbatches: the groups of mini-batches that AutoLR's loss estimates are averaged over.

A superbatch is drawn from ``probe_data``.  For a list or tuple of batches it is a list of indices,
drawn with AutoLR's own seeded generator (reproducible, resumable, and the global generator is never
touched).  For any other re-iterable (a ``DataLoader``) it is the list of the batches themselves,
taken in order and restarting the iterable when it is exhausted.
"""

from __future__ import annotations

import collections.abc as cabc
from typing import Any, Iterator

import torch

__all__ = ["check_probe_data", "SuperbatchSampler"]


def check_probe_data(probe_data: Any) -> None:
    """``probe_data`` must yield mini-batches: a list of batches or a re-iterable such as a
    ``DataLoader`` (not a ``Dataset``, not a string, not empty)."""
    if isinstance(probe_data, torch.utils.data.Dataset) and not isinstance(
            probe_data, cabc.Sequence):
        raise TypeError(
            f"probe_data must yield mini-batches, got a Dataset ({type(probe_data).__name__}); "
            "wrap it in a DataLoader, or pass a list of batches")
    if isinstance(probe_data, (str, bytes)) or not isinstance(probe_data, cabc.Iterable):
        raise TypeError(
            f"probe_data must be a list of mini-batches or an iterable such as a DataLoader, got "
            f"{type(probe_data).__name__}")
    if isinstance(probe_data, cabc.Sequence) and len(probe_data) == 0:
        raise ValueError("probe_data is empty; give at least one mini-batch")
    if isinstance(probe_data, cabc.Iterator):
        raise TypeError(
            f"probe_data is a one-shot iterator ({type(probe_data).__name__}): AutoLR draws a new "
            "superbatch at every estimate and would exhaust it.  Pass something it can iterate "
            "again: a list of batches (e.g. list(itertools.islice(gen, 100))) or a DataLoader")
    n = _length(probe_data)
    if n == 0:
        raise ValueError(
            f"probe_data ({type(probe_data).__name__}) has no mini-batches: len(probe_data) == 0 "
            "(an empty dataset, or drop_last=True with batch_size larger than the dataset); give "
            "it at least one batch")


def _length(probe_data: Any):
    """``len(probe_data)`` when it is known (a DataLoader over a map-style dataset), else None."""
    try:
        return len(probe_data)
    except TypeError:   # no __len__, or an IterableDataset loader that cannot tell
        return None


class SuperbatchSampler:
    """Draws superbatches of ``size`` mini-batches from ``probe_data``.

    Parameters
    ----------
    probe_data:
        A list/tuple of batches, or a re-iterable such as a ``DataLoader``.
    size:
        Mini-batches per superbatch.
    seed:
        Seed of the generator that draws indices from a list.
    """

    def __init__(self, probe_data: Any, size: int, seed: int) -> None:
        self.probe_data = probe_data
        self.size = size
        self.indexable = isinstance(probe_data, cabc.Sequence)
        self.generator = torch.Generator().manual_seed(seed)
        self._iter = None
        self._pushback: list = []   # batches handed back by restore(), served first
        self._since: list = []      # batches drawn since the last checkpoint()

    def checkpoint(self) -> torch.Tensor:
        """Mark the current position; :meth:`restore` goes back to it."""
        self._since = []
        return self.generator.get_state()

    def restore(self, mark: torch.Tensor) -> None:
        """Undo the draws since :meth:`checkpoint` (an iterable's batches are served again)."""
        self.generator.set_state(mark)
        self._pushback[:0] = self._since
        self._since = []

    def draw(self) -> list:
        """A new superbatch: indices into a list, or the batches themselves."""
        k = self.size
        if self.indexable:
            n, idx = len(self.probe_data), []
            while len(idx) < k:
                idx += torch.randperm(n, generator=self.generator).tolist()
            return idx[:k]
        batches = []
        restarted = False
        while len(batches) < k:
            if self._pushback:
                batches.append(self._pushback.pop(0))
                continue
            if self._iter is None:
                self._iter = iter(self.probe_data)
            try:
                batches.append(next(self._iter))
                restarted = False
            except StopIteration:
                if restarted:
                    raise ValueError(
                        f"probe_data ({type(self.probe_data).__name__}) yielded no mini-batch on a "
                        "fresh pass: it is empty, or it is a one-shot iterable that cannot be "
                        "iterated again; pass a non-empty list of batches or a DataLoader") from None
                self._iter, restarted = None, True
        self._since += batches
        return batches

    def batches(self, sb: list) -> Iterator:
        """The mini-batches of superbatch ``sb`` (as returned by :meth:`draw`)."""
        if self.indexable:
            return (self.probe_data[i] for i in sb)
        return iter(sb)
