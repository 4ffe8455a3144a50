"""AutoLR: the explore/exploit learning-rate wrapper around any torch optimizer.

Implements *AutoLR: a method for automatic tuning of learning rate* (``autolr-explore-exploit.txt``)
as a transparent wrapper.  The training loop stays the ordinary one::

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    autolr = autostep.AutoLR(opt, model, loss_fn, train_loader, total_steps=10_000)
    for x, y in batches:
        loss = loss_fn(model, (x, y))
        loss.backward()
        autolr.step()
        autolr.zero_grad()

What the wrapper does (paper section in brackets)
-------------------------------------------------
* **Quadratic in the learning-rate perturbation** [2].  At a recompute it takes the direction ``d``
  that the wrapped optimizer would apply per unit learning rate (the *real* next update, with momentum
  buffers, Adam moments, weight decay: see "Search direction" below), evaluates the superbatch loss at
  ``theta - (eta + eps) d`` for ``num_samples`` offsets ``eps`` (5 by default, 3 allowed), fits
  ``k0 + k1 eps + k2 eps^2`` by least squares and takes ``eps_min = -k1 / (2 k2)``.
* **Epsilon thresholding** [2, eq. 3].  The cubic error is approximated by ``|eps|^3`` and bounded by
  ``r * L(theta)``: ``eps_min`` is clipped to ``+-(r L(theta))^(1/3)`` (``eps_threshold`` = r, 1e-3 as in
  Table 7), where ``L(theta)`` is the superbatch loss at the current parameters.  The bound is absolute
  in ``eps``: with Adam-like rates (~1e-3) and r = 1e-3 one decision may raise the rate ~100-fold, which
  is why the paper uses r = 1e-9 .. 1e-12 for its low-rate (NLP) runs; scale ``eps_threshold`` so that
  ``(r L)^(1/3)`` is of the order of the rate you expect.
* **Superbatch** [2.2, App. B].  ``superbatch`` mini-batches drawn from ``probe_data``.  A fresh one is
  drawn for every estimate and used for every ``eps`` of it; the loss-drop rates use one fixed
  superbatch drawn at the first step (the two ends of every rate, and all rates compared with each
  other, come from the same superbatch).  A superbatch loss is the mean of one forward per
  mini-batch, so peak memory stays at one mini-batch.
* **Explore phase** [2.1].  For the first ``explore_steps`` steps the rate is recomputed every
  ``recompute_every`` steps and may only rise (a negative ``eps_min`` leaves it unchanged).
* **Exploit phase** [2.1].  The loss-drop rate is measured every ``recompute_every`` steps; the rate is
  recomputed only when the saturation threshold is crossed: relative at first (drop rate when the
  current rate started / current drop rate >= ``saturation_threshold``, 100 as Table 7), then, from the
  first crossing on, absolute with the drop rate at that crossing as threshold.
* **Rollback** [2.2].  Model and optimizer are snapshotted at every learning-rate change; if the change
  reduced the loss-drop rate, the snapshot is restored and the old rate kept.
* **Decision log.**  :attr:`AutoLR.history` lists every decision as a dict.

Choices the paper leaves open (documented, and visible in :attr:`AutoLR.history`)
-----------------------------------------------------------------------------------
* Sample offsets: ``eps_i`` evenly spaced in ``[-h, h]`` with ``h = (r L(theta))^(1/3)``, the bound of
  eq. 3: the samples cover the region where the quadratic is trusted, which is also the region the
  decision may move to (a sample with ``eta + eps < 0`` is just a point behind ``theta`` on the line).
  Sampling only near ``eta`` (e.g. ``+-eta/2``) while allowing moves up to the bound made the fit
  extrapolate: at small rates float32 loss noise decided the sign of ``eps_min`` and, in our runs, drove
  the rate down to 1e-8.  ``probe_scale`` (default None) optionally caps ``h`` at ``probe_scale * eta``.
* A concave or flat fit (``k2 <= 0``) has no minimum: ``eps_min`` is ``+-inf`` in the descending
  direction and the threshold clips it.  Non-finite probe losses leave the rate unchanged.
* One decision never sets the rate below ``min_lr_ratio * eta`` (0.1): the thresholded ``eps`` may be
  larger than ``eta`` itself (e.g. Adam at 1e-3 with r = 1e-3), which would make the rate negative.
* The loss-drop rate is ``(L_sb(start of window) - L_sb(end of window)) / updates`` on the rate
  superbatch; ``L(theta)`` of the epsilon threshold is the rate superbatch's loss at the recompute (it
  is measured there anyway, which saves one superbatch pass per estimate).  The "rate when the
  current LR started" is the first positive window rate after the change.  At the relative->absolute
  switch the absolute threshold is ``max(rate, 0)``.
* Rollback is decided one window after the change.  In the exploit phase it follows the paper (the drop
  rate after the change is lower than the one before it).  In the explore phase, where a higher rate is
  kept "even with no improvement in loss" (section 1), a change is rolled back only when the loss *rose*
  over the window (drop rate < 0) or became non-finite; comparing with the previous window's rate there
  would undo almost every increase, because early drop rates fall anyway.  After a rollback the update
  of that step is skipped (its gradient belongs to the abandoned point) and the old rate runs for one
  window without a recompute.
* The first recompute happens after the first window, so a drop rate exists before any change.

Search direction
----------------
The direction is taken from the wrapped optimizer itself: its state (``optimizer.state`` and the
param-group values) is cloned, it steps once with every group's rate set to ``ratio_g * 1`` (``ratio_g``
= the group's rate / group 0's rate at construction), ``d = theta_before - theta_after`` is recorded, and
parameters, state and group values are put back exactly (the clones become the live state).  This is
exact for any optimizer whose update is linear in the learning rate (SGD with momentum, dampening,
Nesterov and weight decay, Adam, AdamW, Adagrad, RMSprop, ...), costs one optimizer step plus a copy of
the parameters and the optimizer state per recompute, and runs the optimizer's step hooks once more.

Randomness, buffers, ranks
--------------------------
All probe and drop-rate forwards run under ``torch.no_grad()`` in the model's current mode; the CPU
and CUDA generators are snapshotted first, replayed before each superbatch pass (same dropout masks for
every ``eps``) and put back afterwards, so the training stream is not shifted; module buffers
(BatchNorm statistics) changed by these forwards are restored.  Every loss that feeds a decision is
averaged over ranks with :class:`~autostep.distributed.Reducer`, so all ranks take the same decisions.

Cost
----
Per recompute: ``num_samples * superbatch`` forward passes, one extra optimizer step, and transiently
two copies of the parameters plus one of the optimizer state.  Per window (every ``recompute_every``
steps, both phases): ``superbatch`` forwards for the drop rate.  With the paper's ratio
``recompute_every = 10 * superbatch`` and a backward costing two forwards, the explore phase costs
``6 * 100 / 3000 = 20 %`` (the paper's 16.6 % counts the 5 probe passes only) and a window of the exploit
phase without a recompute about 3 %.  On a CPU, where a no-grad forward of a small MLP costs about
half a training step, the measured ratio is higher: see ``benchmarks/overhead_autolr.py``.
For iterable ``probe_data`` the two superbatches are held in memory (``2 * superbatch`` mini-batches).
A rollback snapshot kept in memory costs one copy of the parameters and buffers plus one of the
optimizer state (SGD: 0-1x params, momentum SGD: 1x, Adam/AdamW: 2x), held for one window after each
change; ``snapshot="disk"`` writes it with ``torch.save`` to ``snapshot_dir`` instead (no memory, one
write per change and one read per rollback).
"""

from __future__ import annotations

import collections.abc as cabc
import copy
import math
import os
import tempfile
import uuid
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ._closure import BufferGuard, RNGSnapshot
from ._line import Line
from ._linalg import solve3
from .distributed import Reducer
from .optim import _validate as V

__all__ = [
    "AutoLR",
    "fit_quadratic",
    "quadratic_argmin",
    "eps_bound",
    "clip_eps",
    "probe_offsets",
    "next_lr",
    "should_rollback",
    "SaturationMonitor",
]

EXPLORE, EXPLOIT = "explore", "exploit"


# ---------------------------------------------------------------------------------------- pure math
def fit_quadratic(eps: Sequence[float], losses: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit ``losses ~ k0 + k1 * eps + k2 * eps**2``; returns ``(k0, k1, k2)``.

    Computed in float64 on offsets scaled to ``[-1, 1]`` and losses centred on their mean, so tiny
    offsets (Adam rates ~1e-4) are as well conditioned as large ones.  Needs at least three distinct
    offsets; with exactly three it interpolates.
    """
    eps = [float(e) for e in eps]
    ys = [float(y) for y in losses]
    if len(eps) != len(ys):
        raise ValueError(f"fit_quadratic needs one loss per offset, got {len(eps)} offsets and "
                         f"{len(ys)} losses")
    if len(set(eps)) < 3:
        raise ValueError(f"fit_quadratic needs at least 3 distinct offsets, got {eps!r}")
    h = max(abs(e) for e in eps)
    xs = [e / h for e in eps]
    ym = sum(ys) / len(ys)
    yc = [y - ym for y in ys]
    s = [sum(x ** p for x in xs) for p in range(5)]
    t = [sum(y * x ** p for x, y in zip(xs, yc)) for p in range(3)]
    a = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]]
    c0, c1, c2 = _solve3(a, t)
    return c0 + ym, c1 / h, c2 / (h * h)


def _solve3(a: list, b: list) -> list:
    x = solve3(a, b)
    if x is None:
        raise ValueError("fit_quadratic: singular system (offsets not distinct)")
    return x


def quadratic_argmin(k1: float, k2: float) -> float:
    """``eps_min = -k1 / (2 k2)`` for a convex fit; for ``k2 <= 0`` (no minimum) ``+-inf`` in the
    direction where the fit descends, and ``0.0`` when it is flat."""
    if k2 > 0:
        return -k1 / (2.0 * k2)
    if k1 < 0:
        return math.inf
    if k1 > 0:
        return -math.inf
    return 0.0


def eps_bound(loss: float, r: float) -> float:
    """Largest ``|eps|`` allowed by ``|eps|^3 < r * L(theta)``: ``(r * L)^(1/3)`` (0 if ``L <= 0``)."""
    if not (loss > 0 and math.isfinite(loss)):
        return 0.0
    return (r * loss) ** (1.0 / 3.0)


def clip_eps(eps_min: float, loss: float, r: float) -> tuple[float, bool]:
    """Epsilon thresholding (paper eq. 3): keep ``eps_min`` if ``|eps_min|^3 < r * L``, else clip it
    to ``sign(eps_min) * (r * L)^(1/3)``.  Returns ``(eps, clipped)``; NaN gives ``(0.0, True)``."""
    if math.isnan(eps_min):
        return 0.0, True
    if abs(eps_min) ** 3 < r * loss:
        return eps_min, False
    return math.copysign(eps_bound(loss, r), eps_min), True


def probe_offsets(lr: float, bound: float, num_samples: int,
                  probe_scale: Optional[float] = None) -> list[float]:
    """``num_samples`` offsets evenly spaced in ``[-h, h]``: ``h = bound``, or
    ``min(probe_scale * lr, bound)`` when ``probe_scale`` is given."""
    h = bound if probe_scale is None else min(probe_scale * lr, bound)
    n = num_samples
    return [h * (2.0 * i / (n - 1) - 1.0) for i in range(n)]


def next_lr(lr: float, eps: float, phase: str, min_lr_ratio: float) -> float:
    """New rate from the thresholded ``eps``: explore only rises (``lr + max(eps, 0)``); exploit
    takes ``lr + eps`` but never less than ``min_lr_ratio * lr``."""
    if phase == EXPLORE:
        return lr + max(eps, 0.0)
    return max(lr + eps, min_lr_ratio * lr)


def should_rollback(phase: str, rate_before: float, rate_after: float) -> bool:
    """Whether a learning-rate change is undone, given the drop rates of the windows before and after.

    Non-finite ``rate_after`` always rolls back.  Exploit: the change reduced the drop rate
    (``rate_after < rate_before``), as in the paper.  Explore: the loss rose (``rate_after < 0``).
    """
    if not math.isfinite(rate_after):
        return True
    if phase == EXPLORE:
        return rate_after < 0.0
    return rate_after < rate_before


class SaturationMonitor:
    """The saturation threshold of section 2.1: relative first, absolute after the first crossing.

    ``crossed(rate_start, rate_now)`` is True when the current learning rate has saturated:
    relative mode: ``rate_start > 0`` and ``rate_start / rate_now >= threshold`` (written
    ``rate_now * threshold <= rate_start``, so ``rate_now <= 0`` counts as saturated); the first
    crossing switches, once, to absolute mode with ``absolute = max(rate_now, 0)``; absolute mode:
    ``rate_now <= absolute``.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self.mode = "relative"
        self.absolute: Optional[float] = None
        self.switched_now = False

    def crossed(self, rate_start: Optional[float], rate_now: float) -> bool:
        self.switched_now = False
        if not math.isfinite(rate_now):
            return False
        if self.mode == "absolute":
            return rate_now <= self.absolute
        if rate_start is None or not rate_start > 0:
            return False
        if rate_now * self.threshold <= rate_start:
            self.mode = "absolute"
            self.absolute = max(rate_now, 0.0)
            self.switched_now = True
            return True
        return False

    def state_dict(self) -> dict:
        return {"mode": self.mode, "absolute": self.absolute}

    def load_state_dict(self, sd: dict) -> None:
        self.mode, self.absolute = sd["mode"], sd["absolute"]


# ---------------------------------------------------------------------------------------- helpers
def _clone_state(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---------------------------------------------------------------------------------------- wrapper
class AutoLR:
    """Explore/exploit learning-rate control around a ``torch.optim`` optimizer (see module docs).

    Parameters
    ----------
    optimizer:
        The wrapped ``torch.optim.Optimizer``; its update must be linear in ``lr`` (SGD, momentum SGD,
        Adam, AdamW, ...).  Its current ``lr`` is the seed rate; AutoLR owns ``group["lr"]`` from now
        on (several groups keep their ratios to group 0).
    model:
        The ``nn.Module`` being trained (snapshotted for rollback with its buffers).
    loss_fn:
        ``loss_fn(model, batch)`` returns the scalar loss of one mini-batch (same signature as the LR
        search).  Called only under ``torch.no_grad()`` by AutoLR.
    probe_data:
        Mini-batches for the superbatch: a list/tuple of batches (drawn by index with AutoLR's own
        seeded generator: reproducible and resumable), or a re-iterable such as a ``DataLoader``
        (batches taken in order, restarting it when exhausted; the current superbatch is then kept
        in memory and in the state dict).
    total_steps:
        Training budget in steps; needed for a fractional ``explore_steps`` and scales the defaults
        of ``explore_steps`` and ``superbatch`` to the run.
    explore_steps:
        Steps of the explore phase: an ``int``, or a ``float`` in ``[0, 1]`` giving a fraction of
        ``total_steps``.  Default: 20 % of ``total_steps`` (Table 7: 10 of 50 epochs), or
        ``10 * recompute_every`` when ``total_steps`` is not given.
    recompute_every:
        Steps between drop-rate checks (and recomputes in the explore phase).  The paper uses about
        twice an epoch.  Default ``10 * superbatch`` (the paper's 1000 steps for 100 batches, which
        keeps the cost near its 16.6 % bound).
    superbatch:
        Mini-batches per superbatch.  Default 100 as the paper (it notes 50 suffices); when
        ``total_steps`` is given and shorter than 25 000 steps, ``total_steps // 250`` (at least 1),
        so that a short run still has 25 windows with the paper's 10:1 window to superbatch ratio
        (with 100 windows, i.e. superbatches of a few batches, drop rates were noise-dominated
        and the exploit phase drove the rate to ~1e-6 on Fashion-MNIST: see
        ``benchmarks/autolr_table2.py``).
    num_samples:
        Number of offsets ``eps`` per estimate (default 5; 3 is the minimum).
    eps_threshold:
        Relative error threshold ``r`` of eq. 3 (default 1e-3; the paper uses 1e-9 to 1e-12 for NLP
        models that train at rates ~1e-5).
    saturation_threshold:
        Relative saturation threshold (default 100; Table 7 uses 500 for ImageNet, 2-5 for NLP).
    probe_scale:
        None (default): the sample offsets span the epsilon bound ``+-(r L)^(1/3)``; a float caps
        their half-width at ``probe_scale * lr``.
    min_lr_ratio:
        Floor of one exploit decision as a fraction of the current rate.
    rollback:
        Enable the rollback safeguard (default True).
    snapshot:
        ``"memory"`` (default) or ``"disk"`` for the rollback snapshots (see "Cost").
    snapshot_dir:
        Folder for disk snapshots (default: a fresh temporary folder).
    seed:
        Seed of AutoLR's own generator that draws superbatches from a list.
    reducer:
        :class:`~autostep.distributed.Reducer` averaging probe losses over ranks (default: world).

    Attributes
    ----------
    history:
        One dict per decision: ``step, phase, event`` (``"recompute"``, ``"rollback"``,
        ``"switch"``), ``old_lr, new_lr, eps_min, eps, clipped, rollback, loss, rate, k`` and more.
    probe_forwards, recomputes, rollbacks:
        Cumulative counters of the extra work.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        probe_data: Any,
        *,
        total_steps: Optional[int] = None,
        explore_steps: Optional[float] = None,
        recompute_every: Optional[int] = None,
        superbatch: Optional[int] = None,
        num_samples: int = 5,
        eps_threshold: float = 1e-3,
        saturation_threshold: float = 100.0,
        probe_scale: Optional[float] = None,
        min_lr_ratio: float = 0.1,
        rollback: bool = True,
        snapshot: str = "memory",
        snapshot_dir: Optional[str] = None,
        seed: int = 0,
        reducer: Optional[Reducer] = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; pass the "
                "optimizer instance, e.g. AutoLR(torch.optim.SGD(model.parameters(), lr=0.1), ...)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got "
                            f"{type(loss_fn).__name__} {loss_fn!r}")
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
        if total_steps is not None:
            total_steps = V.positive_int("total_steps", total_steps)
        if superbatch is None:
            superbatch = 100 if total_steps is None else min(100, max(1, total_steps // 250))
        self.superbatch = V.positive_int("superbatch", superbatch)
        self.num_samples = V.positive_int("num_samples", num_samples, minimum=3)
        self.recompute_every = (10 * self.superbatch if recompute_every is None
                                else V.positive_int("recompute_every", recompute_every))
        self.total_steps = total_steps
        self.explore_steps = self._explore(explore_steps, total_steps)
        self.eps_threshold = V.positive("eps_threshold", eps_threshold)
        self.saturation_threshold = V.positive("saturation_threshold", saturation_threshold)
        if self.saturation_threshold < 1:
            raise ValueError(f"saturation_threshold must be >= 1 (a ratio of drop rates), got "
                             f"{saturation_threshold!r}")
        self.probe_scale = None if probe_scale is None else V.positive("probe_scale", probe_scale)
        self.min_lr_ratio = V.open_unit("min_lr_ratio", min_lr_ratio)
        if not isinstance(rollback, bool):
            raise TypeError(f"rollback must be True or False, got {rollback!r}")
        self.rollback = rollback
        self.snapshot = V.choice("snapshot", snapshot, ("memory", "disk"))
        if snapshot_dir is not None and not os.path.isdir(snapshot_dir):
            raise ValueError(f"snapshot_dir {snapshot_dir!r} is not an existing folder; create it "
                             "or leave it None for a temporary folder")
        self.snapshot_dir = snapshot_dir
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")

        self.optimizer = optimizer
        self.model = model
        self.loss_fn = loss_fn
        self.probe_data = probe_data
        self.reducer = reducer or Reducer()
        self._indexable = isinstance(probe_data, cabc.Sequence)
        self._iter = None
        self._gen = torch.Generator().manual_seed(seed)
        lr0 = self._group_lr(optimizer.param_groups[0])
        if not (lr0 > 0 and math.isfinite(lr0)):
            raise ValueError(
                f"AutoLR starts from the wrapped optimizer's learning rate, got lr={lr0!r} in param "
                "group 0; set a positive seed rate (the paper uses 0.1 for SGD, 1e-3 for Adam)")
        self._ratios = [self._group_lr(g) / lr0 for g in optimizer.param_groups]
        self._monitor = SaturationMonitor(self.saturation_threshold)
        self._device = torch.device("cpu")

        self.history: list[dict] = []
        self.probe_forwards = 0
        self.recomputes = 0
        self.rollbacks = 0
        self._t = 0              # step() calls so far
        self._updates = 0        # real optimizer updates so far
        self._sb: Optional[list] = None        # superbatch of the last estimate (indices or batches)
        self._rate_sb: Optional[list] = None   # superbatch of the loss-drop rates (fixed)
        self._loss_prev: Optional[float] = None   # superbatch loss at the start of the window
        self._upd_prev = 0
        self._rate_start: Optional[float] = None  # drop rate when the current lr started
        self._last_rate: Optional[float] = None
        self._pending: Optional[dict] = None      # change awaiting its rollback decision
        self._quiet = False                       # skip the recompute at the next check

    # ------------------------------------------------------------------ configuration helpers
    def _explore(self, explore_steps, total_steps) -> int:
        if explore_steps is None:
            return (int(0.2 * total_steps) if total_steps is not None
                    else 10 * self.recompute_every)
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

    @staticmethod
    def _group_lr(group: dict) -> float:
        lr = group.get("lr")
        if lr is None:
            raise ValueError("the wrapped optimizer has a param group without 'lr'; AutoLR controls "
                             "group['lr'] and needs it")
        return float(lr)

    # ------------------------------------------------------------------ delegation
    @property
    def param_groups(self) -> list:
        """The wrapped optimizer's ``param_groups``."""
        return self.optimizer.param_groups

    @property
    def state(self):
        """The wrapped optimizer's per-parameter ``state``."""
        return self.optimizer.state

    @property
    def defaults(self) -> dict:
        """The wrapped optimizer's ``defaults``."""
        return self.optimizer.defaults

    @property
    def lr(self) -> float:
        """The current learning rate (group 0; other groups keep their initial ratio to it)."""
        return self._group_lr(self.optimizer.param_groups[0])

    @property
    def phase(self) -> str:
        """``"explore"`` during the first ``explore_steps`` steps, then ``"exploit"``."""
        return EXPLORE if self._t < self.explore_steps else EXPLOIT

    @property
    def saturation_mode(self) -> str:
        """``"relative"`` until the first saturation crossing, ``"absolute"`` after it."""
        return self._monitor.mode

    @property
    def absolute_threshold(self) -> Optional[float]:
        """The absolute saturation threshold (drop rate at the first crossing), or None."""
        return self._monitor.absolute

    @property
    def steps(self) -> int:
        """Number of :meth:`step` calls so far."""
        return self._t

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Delegates to the wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        """Delegates to the wrapped optimizer; the group keeps its rate's ratio to the current rate."""
        self.optimizer.add_param_group(param_group)
        self._ratios.append(self._group_lr(self.optimizer.param_groups[-1]) / self.lr)

    def __repr__(self) -> str:
        return (f"AutoLR(lr={self.lr:.4g}, phase={self.phase}, explore_steps={self.explore_steps}, "
                f"recompute_every={self.recompute_every}, superbatch={self.superbatch}, "
                f"optimizer={type(self.optimizer).__name__})")

    def _set_lr(self, eta: float) -> None:
        for g, ratio in zip(self.optimizer.param_groups, self._ratios):
            v = eta * ratio
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(v)
            else:
                g["lr"] = v

    def _params(self) -> list:
        seen, out = set(), []
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    # ------------------------------------------------------------------ the step
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        """One training step: maybe check/recompute the rate, then the wrapped optimizer's step.

        Call it after ``loss.backward()``.  A ``closure`` (torch convention: it zeroes the grads,
        computes the loss and calls ``backward()``) is evaluated first and its loss returned.  At a
        rollback the update of this step is skipped (the gradient belongs to the abandoned point).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rolled = False
        due = self._t > 0 and self._t % self.recompute_every == 0
        if self._rate_sb is None or due:
            rng = RNGSnapshot()
            try:
                if self._rate_sb is None:
                    self._start()
                if due:
                    rolled = self._check()
            finally:
                rng.restore()
        if not rolled:
            self.optimizer.step()
            self._updates += 1
        self._t += 1
        return loss

    def _start(self) -> None:
        self._rate_sb = self._draw_superbatch()
        self._loss_prev = self._eval(self._rate_sb)
        self._upd_prev = self._updates

    def _check(self) -> bool:
        """Drop-rate check at the end of a window; returns True when a rollback happened."""
        phase = self.phase
        loss_now = self._eval(self._rate_sb)
        n = self._updates - self._upd_prev
        rate = (self._loss_prev - loss_now) / n if n > 0 else math.nan
        if not math.isfinite(loss_now):
            rate = math.nan
        pend, self._pending = self._pending, None
        if pend is not None:
            if self.rollback and should_rollback(pend["phase"], pend["rate_before"], rate):
                self._do_rollback(pend, rate)
                return True
            self._drop_snapshot(pend)
        if math.isfinite(rate) and (self._rate_start is None or not self._rate_start > 0):
            self._rate_start = rate
        self._last_rate = rate
        self._loss_prev, self._upd_prev = loss_now, self._updates
        if self._quiet:
            self._quiet = False
            return False
        if phase == EXPLORE:
            self._recompute(phase, rate, loss_now)
        elif self._monitor.crossed(self._rate_start, rate):
            if self._monitor.switched_now:
                self._log(event="switch", phase=phase, old_lr=self.lr, new_lr=self.lr, rate=rate,
                          rate_start=self._rate_start, absolute=self._monitor.absolute)
            self._recompute(phase, rate, loss_now)
        return False

    # ------------------------------------------------------------------ superbatch
    def _draw_superbatch(self) -> list:
        k = self.superbatch
        if self._indexable:
            n, idx = len(self.probe_data), []
            while len(idx) < k:
                idx += torch.randperm(n, generator=self._gen).tolist()
            return idx[:k]
        batches = []
        restarted = False
        while len(batches) < k:
            if self._iter is None:
                self._iter = iter(self.probe_data)
            try:
                batches.append(next(self._iter))
                restarted = False
            except StopIteration:
                if restarted or self._iter is self.probe_data:
                    raise ValueError(
                        "probe_data ran out of mini-batches; pass a re-iterable (a DataLoader or a "
                        "list), not a one-shot iterator or generator") from None
                self._iter, restarted = None, True
        return batches

    def _batches(self, sb: list):
        if self._indexable:
            return (self.probe_data[i] for i in sb)
        return iter(sb)

    @torch.no_grad()
    def _local_loss(self, sb: list, rng: RNGSnapshot) -> float:
        """Mean loss over the superbatch at the current parameters (this rank only)."""
        rng.restore()
        guard = BufferGuard()
        total, count = None, 0
        try:
            with guard.watch():
                for batch in self._batches(sb):
                    out = self.loss_fn(self.model, batch)
                    if not isinstance(out, torch.Tensor) or out.numel() != 1:
                        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ""
                        raise TypeError(f"loss_fn(model, batch) must return a scalar tensor, got "
                                        f"{type(out).__name__}{shape}")
                    out = out.detach().to(torch.float64).reshape(())
                    total = out if total is None else total + out
                    count += 1
        finally:
            guard.restore()
        self._device = total.device
        self.probe_forwards += count
        return float(total) / count

    def _eval(self, sb: list) -> float:
        """Rank-averaged loss of superbatch ``sb`` at the current parameters."""
        rng = RNGSnapshot()
        v = self.reducer.mean([self._local_loss(sb, rng)], self._device)[0]
        rng.restore()
        return v if math.isfinite(v) else math.nan

    # ------------------------------------------------------------------ direction and probes
    @torch.no_grad()
    def _direction(self, params: list, line: Line) -> list:
        """``d`` per unit rate from the optimizer's real next update; everything restored exactly."""
        opt = self.optimizer
        saved_state = {p: {k: _clone_state(v) for k, v in st.items()} for p, st in opt.state.items()}
        saved_groups = [{k: _clone_state(v) for k, v in g.items() if k != "params"}
                        for g in opt.param_groups]
        try:
            self._set_lr(1.0)
            opt.step()
            d = torch._foreach_sub(line.w0[0], params)
        finally:
            line.restore()
            for p in list(opt.state.keys()):
                if p not in saved_state:
                    del opt.state[p]
            for p, st in saved_state.items():
                cur = opt.state[p]
                cur.clear()
                cur.update(st)
            for g, sg in zip(opt.param_groups, saved_groups):
                for k, v in sg.items():
                    if isinstance(g.get(k), torch.Tensor) and isinstance(v, torch.Tensor):
                        g[k].copy_(v)
                    else:
                        g[k] = v
        return list(d)

    def _recompute(self, phase: str, rate_now: float, loss0: float) -> None:
        """One estimate at the current point; ``loss0`` is L(theta) on the rate superbatch."""
        old = self.lr
        r = self.eps_threshold
        self._sb = self._draw_superbatch()
        rng = RNGSnapshot()
        self.recomputes += 1
        entry = dict(event="recompute", phase=phase, old_lr=old, new_lr=old, loss=loss0, rate=rate_now,
                     rate_start=self._rate_start, eps_min=math.nan, eps=0.0, clipped=False,
                     rollback=False, eps_bound=eps_bound(loss0, r), offsets=None, losses=None, k=None)
        bound = entry["eps_bound"]
        if not math.isfinite(loss0) or bound <= 0.0:
            self._log(**entry, note="superbatch loss is not positive and finite; rate unchanged")
            return
        offsets = probe_offsets(old, bound, self.num_samples, self.probe_scale)
        params = self._params()
        line = Line([params], [None])
        try:
            line.set_dirs([self._direction(params, line)])
            local = []
            for e in offsets:
                line.move([old + e])
                local.append(self._local_loss(self._sb, rng))
        finally:
            line.restore()
            line.release()
            rng.restore()
        losses = self.reducer.mean(local, self._device)
        entry.update(offsets=offsets, losses=losses)
        if not all(math.isfinite(v) for v in losses):
            self._log(**entry, note="non-finite probe loss; rate unchanged")
            return
        k = fit_quadratic(offsets, losses)
        e_min = quadratic_argmin(k[1], k[2])
        e, clipped = clip_eps(e_min, loss0, r)
        new = next_lr(old, e, phase, self.min_lr_ratio)
        entry.update(k=k, eps_min=e_min, eps=e, clipped=clipped, new_lr=new)
        if new != old:
            self._pending = dict(phase=phase, step=self._t, old_lr=old, new_lr=new,
                                 rate_before=rate_now, rate_start=self._rate_start, loss0=loss0,
                                 snapshot=self._take_snapshot() if self.rollback else None)
            if self._pending["snapshot"] is not None:
                entry["snapshot_bytes"] = self._pending["snapshot"]["bytes"]
            self._set_lr(new)
            self._rate_start = None
        self._log(**entry)

    # ------------------------------------------------------------------ rollback
    def _snapshot_tensors(self) -> list:
        seen, out = set(), []
        for t in list(self.model.parameters()) + list(self.model.buffers()) + self._params():
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    @torch.no_grad()
    def _take_snapshot(self) -> dict:
        tensors = [t.detach().clone() for t in self._snapshot_tensors()]
        sd = self.optimizer.state_dict()
        opt_sd = {"state": {k: {n: _clone_state(v) for n, v in st.items()}
                            for k, st in sd["state"].items()},
                  "param_groups": copy.deepcopy(sd["param_groups"])}
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        nbytes += sum(v.numel() * v.element_size() for st in opt_sd["state"].values()
                      for v in st.values() if isinstance(v, torch.Tensor))
        snap = {"bytes": nbytes}
        if self.snapshot == "disk":
            folder = self.snapshot_dir or tempfile.mkdtemp(prefix="autolr-")
            self.snapshot_dir = folder
            path = os.path.join(folder, f"autolr-{uuid.uuid4().hex}.pt")
            torch.save({"tensors": tensors, "optimizer": opt_sd}, path)
            snap["path"] = path
        else:
            snap["tensors"], snap["optimizer"] = tensors, opt_sd
        return snap

    @torch.no_grad()
    def _do_rollback(self, pend: dict, rate: float) -> None:
        snap = pend["snapshot"]
        if "path" in snap:
            data = torch.load(snap["path"], weights_only=True)
            os.remove(snap["path"])
        else:
            data = snap
        for t, saved in zip(self._snapshot_tensors(), data["tensors"]):
            t.copy_(saved)
        self.optimizer.load_state_dict(data["optimizer"])
        self._set_lr(pend["old_lr"])
        self._rate_start = pend["rate_start"]
        self._loss_prev, self._upd_prev = pend["loss0"], self._updates
        self._quiet = True
        self.rollbacks += 1
        self._log(event="rollback", phase=self.phase, old_lr=pend["new_lr"], new_lr=pend["old_lr"],
                  rollback=True, rate=rate, rate_before=pend["rate_before"], change_step=pend["step"])

    def _drop_snapshot(self, pend: dict) -> None:
        snap = pend.get("snapshot")
        if snap and "path" in snap and os.path.exists(snap["path"]):
            os.remove(snap["path"])

    def _log(self, **entry) -> None:
        for key, default in (("eps_min", math.nan), ("eps", 0.0), ("clipped", False),
                             ("rollback", False)):
            entry.setdefault(key, default)
        entry["step"] = self._t
        entry["mode"] = self._monitor.mode
        self.history.append(entry)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The wrapped optimizer's state dict plus AutoLR's own state under the key ``"autolr"``.

        Includes the current superbatch (indices for list ``probe_data``, the batches themselves for
        an iterable), the pending rollback snapshot (tensors, or the file path for disk snapshots)
        and the decision history, so a resumed run continues identically (for iterable
        ``probe_data`` the position of its iterator cannot be saved: later superbatches differ).
        """
        sd = self.optimizer.state_dict()
        sd["autolr"] = {
            "t": self._t, "updates": self._updates, "upd_prev": self._upd_prev,
            "loss_prev": self._loss_prev, "rate_start": self._rate_start,
            "last_rate": self._last_rate, "quiet": self._quiet, "ratios": list(self._ratios),
            "monitor": self._monitor.state_dict(), "generator": self._gen.get_state(),
            "superbatch": self._sb, "rate_superbatch": self._rate_sb, "pending": self._pending,
            "history": copy.deepcopy(self.history),
            "counters": (self.probe_forwards, self.recomputes, self.rollbacks),
        }
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict made by :meth:`state_dict` (a plain optimizer state dict is accepted too)."""
        sd = dict(state_dict)
        own = sd.pop("autolr", None)
        self.optimizer.load_state_dict(sd)
        if own is None:
            return
        self._t, self._updates, self._upd_prev = own["t"], own["updates"], own["upd_prev"]
        self._loss_prev, self._rate_start = own["loss_prev"], own["rate_start"]
        self._last_rate, self._quiet = own["last_rate"], own["quiet"]
        self._ratios = list(own["ratios"])
        self._monitor.load_state_dict(own["monitor"])
        self._gen.set_state(own["generator"])
        self._sb, self._rate_sb = own["superbatch"], own["rate_superbatch"]
        self._pending = own["pending"]
        self.history = copy.deepcopy(own["history"])
        self.probe_forwards, self.recomputes, self.rollbacks = own["counters"]
