"""AutoLR's arguments: checked once, with errors that name the bad value and say what to do.

:func:`check_options` turns the keyword arguments of :class:`~autostep.autolr.AutoLR` into an
:class:`Options` record, filling in the defaults that depend on the run length (see the AutoLR
docstring for their meaning and the paper's values).  :func:`check_objects` checks the optimizer,
model and loss function, and :func:`seed_rates` the learning rates AutoLR starts from.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .. import _validate as V

__all__ = ["Options", "check_options", "check_objects", "group_lr", "seed_rates"]


@dataclass(frozen=True)
class Options:
    """The checked settings of one AutoLR instance (defaults already resolved)."""

    total_steps: Optional[int]
    explore_steps: int
    recompute_every: int
    superbatch: int
    num_samples: int
    eps_threshold: float
    saturation_threshold: float
    probe_scale: Optional[float]
    min_lr_ratio: float
    rollback: bool
    snapshot: str
    snapshot_dir: Optional[str]
    seed: int


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _explore(explore_steps, total_steps, recompute_every: int) -> int:
    if explore_steps is None:
        return int(0.2 * total_steps) if total_steps is not None else 10 * recompute_every
    if isinstance(explore_steps, bool) or not _is_number(explore_steps):
        raise TypeError(f"explore_steps must be an int (steps) or a float in [0, 1] (fraction "
                        f"of total_steps), got {explore_steps!r}")
    if isinstance(explore_steps, float):
        if not 0.0 <= explore_steps <= 1.0:
            raise ValueError(f"explore_steps as a fraction must be in [0, 1], got "
                             f"{explore_steps!r}; pass an int for a number of steps")
        if total_steps is None:
            raise ValueError(f"explore_steps={explore_steps!r} is a fraction of the training "
                             "budget: pass total_steps too, or give explore_steps in steps")
        return int(round(explore_steps * total_steps))
    if explore_steps < 0:
        raise ValueError(f"explore_steps must be >= 0, got {explore_steps!r}")
    return int(explore_steps)


def check_options(*, total_steps=None, explore_steps=None, recompute_every=None, superbatch=None,
                  num_samples=5, eps_threshold=1e-3, saturation_threshold=100.0, probe_scale=None,
                  min_lr_ratio=0.1, rollback=True, snapshot="memory", snapshot_dir=None,
                  seed=0) -> Options:
    """Check AutoLR's keyword arguments and resolve the run-length dependent defaults."""
    if total_steps is not None:
        total_steps = V.positive_int("total_steps", total_steps)
    if superbatch is None:
        superbatch = 100 if total_steps is None else min(100, max(1, total_steps // 250))
    superbatch = V.positive_int("superbatch", superbatch)
    num_samples = V.positive_int("num_samples", num_samples, minimum=3)
    recompute_every = (10 * superbatch if recompute_every is None
                       else V.positive_int("recompute_every", recompute_every))
    explore = _explore(explore_steps, total_steps, recompute_every)
    eps_threshold = V.positive("eps_threshold", eps_threshold)
    sat = V.positive("saturation_threshold", saturation_threshold)
    if sat < 1:
        raise ValueError(f"saturation_threshold must be >= 1 (a ratio of drop rates), got "
                         f"{saturation_threshold!r}")
    probe_scale = None if probe_scale is None else V.positive("probe_scale", probe_scale)
    min_lr_ratio = V.open_unit("min_lr_ratio", min_lr_ratio)
    if not isinstance(rollback, bool):
        raise TypeError(f"rollback must be True or False, got {rollback!r}")
    snapshot = V.choice("snapshot", snapshot, ("memory", "disk"))
    if snapshot_dir is not None and not os.path.isdir(snapshot_dir):
        raise ValueError(f"snapshot_dir {snapshot_dir!r} is not an existing folder; create it "
                         "or leave it None for a temporary folder")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return Options(total_steps=total_steps, explore_steps=explore, recompute_every=recompute_every,
                   superbatch=superbatch, num_samples=num_samples, eps_threshold=eps_threshold,
                   saturation_threshold=sat, probe_scale=probe_scale, min_lr_ratio=min_lr_ratio,
                   rollback=rollback, snapshot=snapshot, snapshot_dir=snapshot_dir, seed=seed)


def check_objects(optimizer: Any, model: Any, loss_fn: Any) -> None:
    """The wrapped optimizer, the model and the loss function are of the right kinds."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; pass the "
            "optimizer instance, e.g. AutoLR(torch.optim.SGD(model.parameters(), lr=0.1), ...)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got "
                        f"{type(loss_fn).__name__} {loss_fn!r}")


def group_lr(group: dict) -> float:
    """A param group's ``lr`` as a float (AutoLR needs every group to have one)."""
    lr = group.get("lr")
    if lr is None:
        raise ValueError("the wrapped optimizer has a param group without 'lr'; AutoLR controls "
                         "group['lr'] and needs it")
    return float(lr)


def seed_rates(optimizer: torch.optim.Optimizer) -> tuple[float, list]:
    """The seed rate (group 0's ``lr``) and every group's ratio to it."""
    lr0 = group_lr(optimizer.param_groups[0])
    if not (lr0 > 0 and math.isfinite(lr0)):
        raise ValueError(
            f"AutoLR starts from the wrapped optimizer's learning rate, got lr={lr0!r} in param "
            "group 0; set a positive seed rate (the paper uses 0.1 for SGD, 1e-3 for Adam)")
    return lr0, [group_lr(g) / lr0 for g in optimizer.param_groups]
