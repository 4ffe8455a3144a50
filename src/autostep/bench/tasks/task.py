"""The :class:`Task` every problem is built as, and the pieces the problem modules share.

A task bundles a freshly initialised model, a ``loss_fn(model, batch)`` and fixed train / validation /
test tensors.  ``batches(n, seed)`` draws mini-batches reproducibly from a generator seeded with
``seed``; ``evaluate(split)`` returns ``(loss, metric)`` in eval mode.  Builders initialise the model
with :func:`seeded`, which leaves the caller's random generators as they were.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Optional

import torch
from torch import nn

from ..._batches import epoch_batches

__all__ = ["Task", "Evaluation", "DataMissing", "seeded", "mlp", "cross_entropy", "classification_eval"]


class DataMissing(RuntimeError):
    """Optional data for a problem is not installed (the message says how to get it)."""


class Evaluation(NamedTuple):
    """What :meth:`Task.evaluate` returns: the mean loss and the task's metric on one split."""

    loss: float
    metric: float


@contextlib.contextmanager
def seeded(seed: int):
    """Draw from the CPU generator seeded with ``seed`` inside the block; the caller's generator state
    is restored on exit (a model built inside is initialised exactly as after ``torch.manual_seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def mlp(sizes, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of the given widths with ReLU (and optional dropout) between them."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    """The classification tasks' ``loss_fn``: mean cross-entropy of ``model(x)`` against ``y``."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def classification_eval(model, data) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over ``data = (x, y)``, in chunks of 2048 rows."""
    x, y = data
    total, correct = 0.0, 0
    for i in range(0, len(x), 2048):
        out = model(x[i:i + 2048])
        total += float(nn.functional.cross_entropy(out, y[i:i + 2048], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + 2048]).sum())
    return total / len(x), correct / len(x)


@dataclass
class Task:
    """One training problem instance (model initialised from the builder's seed), fixed splits."""

    name: str
    model: nn.Module
    loss_fn: Callable  # (model, batch) -> scalar loss
    train: tuple  # tensors sampled for mini-batches
    val: tuple
    test: tuple
    batch_size: int
    metric: str = "accuracy"  # name of the test metric
    higher_is_better: bool = True
    optimum: float = 0.0  # l*, subtracted from the train loss (0 when unknown)
    exact_optimum: bool = False
    sample: Optional[Callable] = None  # (generator) -> batch; default: epochs of rows of train
    eval_fn: Optional[Callable] = None  # (model, data) -> (loss, metric); default: classification
    info: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    def to(self, device) -> "Task":
        """Move the model (and, per batch and per evaluation, the data) to ``device``."""
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def _dev(self, batch: tuple) -> tuple:
        if self.device.type == "cpu":
            return batch
        return tuple(t.to(self.device, non_blocking=True) for t in batch)

    @property
    def dataset_size(self) -> int:
        return len(self.train[0])

    def batches(self, n: int, seed: int = 0, batch_size: Optional[int] = None) -> Iterator[tuple]:
        """``n`` mini-batches from a generator seeded with ``seed``: epochs of a permutation of the
        training rows (``batch_size`` rows, default the task's), or the task's own sampler."""
        g = torch.Generator().manual_seed(seed)
        if self.sample is not None:
            if batch_size is not None:
                raise ValueError(f"task {self.name!r} samples its own batches; batch_size must be None, "
                                 f"got {batch_size!r}")
            for _ in range(n):
                yield self._dev(self.sample(g))
            return
        for batch in epoch_batches(self.train, n, batch_size or self.batch_size, g):
            yield self._dev(batch)

    def batch_list(self, n: int, seed: int = 0, batch_size: Optional[int] = None) -> list:
        """:meth:`batches` as a list."""
        return list(self.batches(n, seed, batch_size))

    @torch.no_grad()
    def evaluate(self, split: str = "test", model: Optional[nn.Module] = None) -> Evaluation:
        """``(loss, metric)`` of ``model`` (default the task's) on ``"train"``/``"val"``/``"test"`` in
        eval mode (the mode is restored); the train loss has ``optimum`` subtracted (a suboptimality
        when the optimum is known)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        model = self.model if model is None else model
        data = self._dev(getattr(self, split))
        was = model.training
        model.eval()
        try:
            loss, metric = (self.eval_fn or classification_eval)(model, data)
        finally:
            model.train(was)
        if split == "train":
            loss -= self.optimum
        return Evaluation(loss, metric)
