"""The explore/exploit schedule of the paper (section 2.1): windows of ``recompute_every`` steps,
loss-drop rates on a fixed superbatch, estimates in the explore phase and at saturation in the
exploit phase, rollback of a change that hurt, and the decision log.

:class:`ExploreExploit` holds the schedule's state and takes every decision; it reaches the model
and the wrapped optimizer only through the callables it is given, so it is the same whoever hosts it.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

from .._snapshot import RNGSnapshot
from .evaluate import SuperbatchLoss
from .options import Options
from .probe import estimate
from .rules import EXPLOIT, EXPLORE, SaturationMonitor, should_rollback
from .superbatch import SuperbatchSampler

__all__ = ["ExploreExploit"]


class ExploreExploit:
    """Decides the learning rate step by step.

    Parameters
    ----------
    options:
        The checked settings.
    sampler, loss:
        Where superbatches come from and how their loss is evaluated.
    rate, set_rate:
        Read and write the current rate (group 0's; the host keeps the other groups' ratios).
    direction:
        ``direction(params)``: the wrapped optimizer's next update per unit rate.
    params:
        ``params()``: the optimized parameters, each once.
    take_snapshot, restore_snapshot, drop_snapshot:
        Save the model and optimizer for a rollback (returns a dict with ``"bytes"``), write a
        saved one back, forget one.  Only called when ``options.rollback`` is True.
    """

    def __init__(self, options: Options, sampler: SuperbatchSampler, loss: SuperbatchLoss, *,
                 rate: Callable[[], float], set_rate: Callable[[float], None],
                 direction: Callable[[list], list], params: Callable[[], list],
                 take_snapshot: Callable[[], dict], restore_snapshot: Callable[[dict], None],
                 drop_snapshot: Callable[[Optional[dict]], None]) -> None:
        self.options = options
        self.sampler = sampler
        self.loss = loss
        self._rate, self._set_rate, self._direction, self._params = rate, set_rate, direction, params
        self._take, self._restore, self._drop = take_snapshot, restore_snapshot, drop_snapshot
        self.monitor = SaturationMonitor(options.saturation_threshold)
        self.history: list[dict] = []
        self.recomputes = 0
        self.rollbacks = 0
        self.t = 0              # step() calls so far
        self.updates = 0        # real optimizer updates so far
        self.sb: Optional[list] = None        # superbatch of the last estimate (indices or batches)
        self.rate_sb: Optional[list] = None   # superbatch of the loss-drop rates (fixed)
        self.loss_prev: Optional[float] = None   # superbatch loss at the start of the window
        self.skip_prev: tuple = ()               # batches left out of it (non-finite loss)
        self.upd_prev = 0
        self.rate_start: Optional[float] = None  # drop rate when the current lr started
        self.last_rate: Optional[float] = None
        self.pending: Optional[dict] = None      # change awaiting its rollback decision
        self.quiet = False                       # skip the recompute at the next check

    _FIELDS = ("t", "updates", "upd_prev", "loss_prev", "skip_prev", "rate_start", "last_rate",
               "quiet", "sb", "rate_sb", "pending", "recomputes", "rollbacks")

    def checkpoint(self) -> tuple:
        """Everything a step may change, for :meth:`restore` if the step fails."""
        return ({k: getattr(self, k) for k in self._FIELDS}, self.monitor.state_dict(),
                len(self.history), self.loss.forwards, self.sampler.checkpoint())

    def restore(self, cp: tuple) -> None:
        """Go back to a :meth:`checkpoint` (a snapshot taken since then is dropped)."""
        fields, monitor, n_history, forwards, mark = cp
        if self.pending is not None and self.pending is not fields["pending"]:
            self._drop(self.pending.get("snapshot"))
        for k, v in fields.items():
            setattr(self, k, v)
        self.monitor.load_state_dict(monitor)
        del self.history[n_history:]
        self.loss.forwards = forwards
        self.sampler.restore(mark)

    @property
    def phase(self) -> str:
        """``"explore"`` during the first ``explore_steps`` steps, then ``"exploit"``."""
        return EXPLORE if self.t < self.options.explore_steps else EXPLOIT

    # ------------------------------------------------------------------ one step
    def busy(self) -> bool:
        """Whether :meth:`begin_step` has work to do at this step (the first step, or a check)."""
        return self.rate_sb is None or (self.t > 0 and self.t % self.options.recompute_every == 0)

    def begin_step(self) -> bool:
        """Run what is due before this step's update; True when the update must be skipped
        (a rollback happened: the gradient belongs to the abandoned point)."""
        rolled = False
        due = self.t > 0 and self.t % self.options.recompute_every == 0
        if self.rate_sb is None or due:
            rng = RNGSnapshot()
            try:
                if self.rate_sb is None:
                    self._start()
                if due:
                    rolled = self._check()
            finally:
                rng.restore()
        return rolled

    def end_step(self, updated: bool) -> None:
        """Count the step (and the update, when one was made)."""
        if updated:
            self.updates += 1
        self.t += 1

    def _start(self) -> None:
        self.rate_sb = self.sampler.draw()
        self.loss_prev = self.loss(self.sampler.batches(self.rate_sb))
        self.skip_prev = self.loss.skipped
        self.upd_prev = self.updates

    def _check(self) -> bool:
        """Drop-rate check at the end of a window; returns True when a rollback happened."""
        phase = self.phase
        loss_now = self.loss(self.sampler.batches(self.rate_sb))
        n = self.updates - self.upd_prev
        rate = (self.loss_prev - loss_now) / n if n > 0 else math.nan
        skipped = self.loss.skipped
        if not math.isfinite(loss_now) or skipped != self.skip_prev:
            rate = math.nan   # (losses over different batches are not comparable)
        pend, self.pending = self.pending, None
        if pend is not None:
            if self.options.rollback and should_rollback(pend["phase"], pend["rate_before"], rate):
                self._rollback(pend, rate)
                return True
            self._drop(pend.get("snapshot"))
        if math.isfinite(rate) and (self.rate_start is None or not self.rate_start > 0):
            self.rate_start = rate
        self.last_rate = rate
        self.loss_prev, self.upd_prev, self.skip_prev = loss_now, self.updates, skipped
        if self.quiet:
            self.quiet = False
            return False
        if phase == EXPLORE:
            self._recompute(phase, rate, loss_now)
        elif self.monitor.crossed(self.rate_start, rate):
            if self.monitor.switched_now:
                lr = self._rate()
                self.log(event="switch", phase=phase, old_lr=lr, new_lr=lr, rate=rate,
                         rate_start=self.rate_start, absolute=self.monitor.absolute)
            self._recompute(phase, rate, loss_now)
        return False

    def _recompute(self, phase: str, rate_now: float, loss0: float) -> None:
        """One estimate at the current point; ``loss0`` is L(theta) on the rate superbatch."""
        old = self._rate()
        self.sb = sb = self.sampler.draw()
        self.recomputes += 1
        params = self._params()
        entry = estimate(self.loss, lambda: self.sampler.batches(sb), params,
                         lambda: self._direction(params), phase=phase, rate=old, loss0=loss0,
                         drop_rate=rate_now, rate_start=self.rate_start, options=self.options)
        new = entry["new_lr"]
        if new != old:
            snap = None
            if self.options.rollback:
                snap = self._take()
                entry["snapshot_bytes"] = snap["bytes"]
            self.pending = dict(phase=phase, step=self.t, old_lr=old, new_lr=new,
                                rate_before=rate_now, rate_start=self.rate_start, loss0=loss0,
                                skip0=self.skip_prev, snapshot=snap)
            self._set_rate(new)
            self.rate_start = None
        self.log(**entry)

    def _rollback(self, pend: dict, rate: float) -> None:
        self._restore(pend["snapshot"])
        self._set_rate(pend["old_lr"])
        self.rate_start = pend["rate_start"]
        self.loss_prev, self.upd_prev = pend["loss0"], self.updates
        self.skip_prev = pend.get("skip0", ())
        self.quiet = True
        self.rollbacks += 1
        self.log(event="rollback", phase=self.phase, old_lr=pend["new_lr"], new_lr=pend["old_lr"],
                 rollback=True, rate=rate, rate_before=pend["rate_before"], change_step=pend["step"])

    def log(self, **entry) -> None:
        """Append a decision to :attr:`history` (with the step and the saturation mode)."""
        for key, default in (("eps_min", math.nan), ("eps", 0.0), ("clipped", False),
                             ("rollback", False)):
            entry.setdefault(key, default)
        entry["step"] = self.t
        entry["mode"] = self.monitor.mode
        self.history.append(entry)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything needed to continue identically (the history is deep-copied)."""
        return {
            "t": self.t, "updates": self.updates, "upd_prev": self.upd_prev,
            "loss_prev": self.loss_prev, "skip_prev": list(self.skip_prev),
            "rate_start": self.rate_start,
            "last_rate": self.last_rate, "quiet": self.quiet,
            "monitor": self.monitor.state_dict(), "generator": self.sampler.generator.get_state(),
            "superbatch": self.sb, "rate_superbatch": self.rate_sb, "pending": self.pending,
            "history": copy.deepcopy(self.history),
            "counters": (self.loss.forwards, self.recomputes, self.rollbacks),
        }

    def load_state_dict(self, own: dict) -> None:
        self.t, self.updates, self.upd_prev = own["t"], own["updates"], own["upd_prev"]
        self.loss_prev, self.rate_start = own["loss_prev"], own["rate_start"]
        self.skip_prev = tuple(own.get("skip_prev", ()))
        self.last_rate, self.quiet = own["last_rate"], own["quiet"]
        self.monitor.load_state_dict(own["monitor"])
        self.sampler.generator.set_state(own["generator"].cpu())
        self.sb, self.rate_sb = own["superbatch"], own["rate_superbatch"]
        self.pending = own["pending"]
        self.history = copy.deepcopy(own["history"])
        self.loss.forwards, self.recomputes, self.rollbacks = own["counters"]
