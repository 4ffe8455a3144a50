"""The :class:`AutoLR` wrapper: a ``torch.optim.Optimizer`` that runs the explore/exploit schedule
around another torch optimizer.  The parts it uses live beside it (see the package docs)."""

from __future__ import annotations

import copy
import warnings
from operator import attrgetter
from typing import Any, Callable, Optional

import torch
from torch import nn

from .._snapshot import drop_snapshot, model_tensors, restore_snapshot, take_snapshot
from ..distributed import Reducer
from .direction import update_direction
from .evaluate import SuperbatchLoss
from .options import check_objects, check_options, group_lr, seed_rates
from .rates import Rates
from .schedule import ExploreExploit
from .state import init_state, is_init_call, pack_state, split_state
from .superbatch import SuperbatchSampler, check_probe_data

__all__ = ["AutoLR"]


def _check_model_holds(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Every optimized parameter should belong to ``model``: AutoLR probes the loss through it."""
    in_model = {id(p) for p in model.parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    outside = [p for p in params if id(p) not in in_model]
    if len(outside) == len(params):
        raise ValueError(
            f"none of the optimizer's {len(params)} parameters is a parameter of the model "
            f"({type(model).__name__}): the optimizer belongs to another model.  Build it from this "
            "model, e.g. torch.optim.SGD(model.parameters(), lr=0.1)")
    if outside:
        shapes = [tuple(p.shape) for p in outside[:3]]
        warnings.warn(
            f"{len(outside)} of the optimizer's {len(params)} parameters (shapes {shapes}...) are "
            f"not parameters of the model ({type(model).__name__}); AutoLR moves them in its "
            "probes and rollbacks, so loss_fn must use them.  If they belong to another model, "
            "give that model its own optimizer.", UserWarning, stacklevel=3)


def run_closure(closure: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
                params: list) -> Any:
    """Evaluate a step's closure in either of autostep's conventions; returns its loss.

    A torch-style closure (``zero_grad()``, loss, ``backward()`` inside, as LBFGS and Lightning
    use) leaves the gradients it computed.  A loss-only closure (returns the loss, no
    ``backward()``) is told apart by the untouched ``.grad`` fields: AutoLR then clears the old
    gradients and back-propagates the returned loss itself.  AutoLR's own probes never call the
    closure; they use ``loss_fn`` on the superbatch.
    """
    before = [(p.grad, None if p.grad is None else p.grad._version) for p in params]
    with torch.enable_grad():
        loss = closure()
    after = [(p.grad, None if p.grad is None else p.grad._version) for p in params]
    untouched = all(a[0] is b[0] and a[1] == b[1] for a, b in zip(before, after))
    if untouched and isinstance(loss, torch.Tensor) and loss.requires_grad:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    return loss


class AutoLR(torch.optim.Optimizer):
    """Explore/exploit learning-rate control around a ``torch.optim`` optimizer (see module docs).

    Parameters
    ----------
    optimizer:
        The wrapped ``torch.optim.Optimizer``; its update must be linear in ``lr`` (SGD, momentum SGD,
        Adam, AdamW, ...).  Its current ``lr`` is the seed rate; AutoLR owns its ``group["lr"]`` from
        now on (several groups keep their ratios to group 0) and refuses, with
        :class:`~autostep.autolr.rates.ForeignRateError`, a rate written there by anything else.
    model:
        The ``nn.Module`` being trained (snapshotted for rollback with its buffers); every parameter
        of ``optimizer`` should be one of its parameters.
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

    AutoLR is a ``torch.optim.Optimizer``: schedulers, the Hugging Face ``Trainer`` and accelerate
    take it.  Its own ``param_groups`` (one per wrapped group, same parameters) hold an ``lr`` that
    starts at the wrapped group's seed rate; whatever a scheduler writes there *multiplies* AutoLR's
    rate by ``lr / seed`` (``LambdaLR(autolr, f)`` applies ``f(t)`` on top of AutoLR's decisions,
    which are made as if the factor were 1).  :attr:`lr` is AutoLR's rate, the wrapped optimizer's
    ``param_groups[g]["lr"]`` the rate in use.  ``state_dict()`` has torch's two keys: the wrapped
    optimizer's ``state``, and ``param_groups`` whose group 0 carries AutoLR's own state under
    ``"autolr"`` (each group's wrapped hyper-parameters under ``"wrapped"``).

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
        check_objects(optimizer, model, loss_fn)
        if isinstance(optimizer, AutoLR):
            raise TypeError("optimizer is already an AutoLR; wrap the torch optimizer only once")
        check_probe_data(probe_data)
        o = check_options(total_steps=total_steps, explore_steps=explore_steps,
                          recompute_every=recompute_every, superbatch=superbatch,
                          num_samples=num_samples, eps_threshold=eps_threshold,
                          saturation_threshold=saturation_threshold, probe_scale=probe_scale,
                          min_lr_ratio=min_lr_ratio, rollback=rollback, snapshot=snapshot,
                          snapshot_dir=snapshot_dir, seed=seed)
        lr0, _ = seed_rates(optimizer)
        _check_model_holds(optimizer, model)
        self.options = o
        for name in o.__dataclass_fields__:   # the settings as attributes, as before the split
            setattr(self, name, getattr(o, name))

        self.optimizer = optimizer
        self.model = model
        self.loss_fn = loss_fn
        self.probe_data = probe_data
        self.reducer = reducer or Reducer()
        # torch.optim.Optimizer's bookkeeping (hooks, profiling) without its own state or groups
        super().__setstate__({"defaults": {"lr": lr0}, "param_groups": [
            {"params": g["params"], "lr": group_lr(g)} for g in optimizer.param_groups]})
        self._rates = Rates([group_lr(g) for g in optimizer.param_groups])
        self._sampler = SuperbatchSampler(probe_data, o.superbatch, o.seed)
        self._loss = SuperbatchLoss(model, loss_fn, self.reducer)
        self._schedule = ExploreExploit(
            o, self._sampler, self._loss, rate=self._rate, set_rate=self._set_rate,
            direction=self._direction, params=self._params, take_snapshot=self._take_snapshot,
            restore_snapshot=self._restore_snapshot, drop_snapshot=drop_snapshot)

    # ------------------------------------------------------------------ torch.optim surface
    @property
    def state(self):
        """The wrapped optimizer's per-parameter ``state``."""
        return self.optimizer.state

    def __getstate__(self) -> dict:
        return dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)

    @property
    def lr(self) -> float:
        """AutoLR's current rate (group 0's, before a scheduler's factor; other groups keep their
        initial ratio to it)."""
        return self._rates.eta

    # read-only views of the parts' counters and modes
    phase = property(attrgetter("_schedule.phase"),
                     doc='``"explore"`` during the first ``explore_steps`` steps, then ``"exploit"``.')
    saturation_mode = property(attrgetter("_schedule.monitor.mode"),
                               doc='``"relative"`` until the first saturation crossing, '
                                   '``"absolute"`` after it.')
    absolute_threshold = property(attrgetter("_schedule.monitor.absolute"),
                                  doc="The absolute saturation threshold (drop rate at the first "
                                      "crossing), or None.")
    steps = property(attrgetter("_schedule.t"), doc="Number of :meth:`step` calls so far.")
    history = property(attrgetter("_schedule.history"),
                       doc="The decision log: one dict per decision (see the class docstring).")
    recomputes = property(attrgetter("_schedule.recomputes"), doc="Estimates made so far.")
    rollbacks = property(attrgetter("_schedule.rollbacks"), doc="Changes undone so far.")
    probe_forwards = property(attrgetter("_loss.forwards"),
                              doc="Forward passes AutoLR itself ran (drop-rate checks and probes).")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Delegates to the wrapped optimizer's ``zero_grad``."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        """Adds the group to the wrapped optimizer; it keeps its rate's ratio to the current rate."""
        self.optimizer.add_param_group(param_group)
        new = self.optimizer.param_groups[-1]
        self.param_groups.append({"params": new["params"], "lr": group_lr(new)})
        self._rates.add_group(group_lr(new))

    def __repr__(self) -> str:
        return (f"AutoLR(lr={self.lr:.4g}, phase={self.phase}, explore_steps={self.explore_steps}, "
                f"recompute_every={self.recompute_every}, superbatch={self.superbatch}, "
                f"optimizer={type(self.optimizer).__name__})")

    # ------------------------------------------------------------------ what the schedule uses
    def _rate(self) -> float:
        return self._rates.eta

    def _set_rate(self, eta: float) -> None:
        self._rates.eta = eta
        self._rates.apply(self.optimizer.param_groups, self.param_groups)

    def _params(self) -> list:
        seen, out = set(), []
        for g in self.optimizer.param_groups:
            for p in g["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def _direction(self, params: list) -> list:
        """``d`` per unit rate: the wrapped optimizer's real next update, everything restored."""
        return update_direction(self.optimizer, params,
                                lambda: self._rates.write_unit(self.optimizer.param_groups))

    def _take_snapshot(self) -> dict:
        snap, self.snapshot_dir = take_snapshot(model_tensors(self.model, self._params()),
                                                self.optimizer, self.snapshot, self.snapshot_dir)
        return snap

    def _restore_snapshot(self, snap: dict) -> None:
        restore_snapshot(snap, model_tensors(self.model, self._params()), self.optimizer)

    # ------------------------------------------------------------------ the step
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None):
        """One training step: maybe check/recompute the rate, then the wrapped optimizer's step.

        Call it after ``loss.backward()``, or pass a ``closure`` in either convention (see
        :func:`run_closure`); its loss is returned.  At a rollback the update of this step is
        skipped (the gradient belongs to the abandoned point).
        An exception out of the step (from ``loss_fn``, ``probe_data`` or the wrapped optimizer)
        leaves AutoLR's state as it was, so the step can be retried.
        """
        if closure is None and is_init_call(self.param_groups, self._params):
            init_state(self.optimizer)   # torch's checkpoint helpers creating a fresh state
            return None
        inner, own = self.optimizer.param_groups, self.param_groups
        self._rates.check(inner)
        loss = None if closure is None else run_closure(closure, self.optimizer, self._params())
        busy = self._schedule.busy()   # checks and estimates run at this step
        cp, rates = self._schedule.checkpoint() if busy else None, self._rates.state_dict()
        try:
            skip = self._schedule.begin_step() if busy else False
            if not skip:
                self._rates.refresh(inner, own)
                self.optimizer.step()
        except BaseException:
            if cp is not None:
                self._schedule.restore(cp)
            self._rates.load_state_dict(rates)
            self._rates.restore(self.optimizer.param_groups)
            raise
        self._schedule.end_step(updated=not skip)
        return loss

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """torch's two keys, laid out as described in :mod:`autostep.autolr.state`.

        AutoLR's own state includes the current superbatch (indices for list ``probe_data``, the
        batches themselves for an iterable), the pending rollback snapshot (tensors, or the file
        path for disk snapshots) and the decision history, so a resumed run continues identically
        (for iterable ``probe_data`` the position of its iterator cannot be saved).
        """
        own = {**self._schedule.state_dict(), "rates": self._rates.state_dict()}
        return pack_state(self.optimizer.state_dict(), self.param_groups, own)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a dict made by :meth:`state_dict`; an older AutoLR dict or a plain optimizer state
        dict (AutoLR's rate becomes its ``lr``) loads too."""
        inner, values, own = split_state(state_dict, len(self.param_groups))
        self.optimizer.load_state_dict(inner)
        if values is not None:
            for og, v in zip(self.param_groups, values):
                og.update(copy.deepcopy(v))
            self._rates.load_state_dict(own["rates"])
            self._schedule.load_state_dict(own)
            return
        self._rates.resync(self.optimizer.param_groups)
        for og, ig in zip(self.param_groups, self.optimizer.param_groups):
            og["lr"] = group_lr(ig)
        if own is not None:   # AutoLR's previous layout
            self._rates.ratios = list(own["ratios"])
            self._schedule.load_state_dict(own)
