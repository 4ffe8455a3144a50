"""The Armijo family's step-size rules (the :class:`StepSizes` part of
:class:`~autostep.optim._armijo.ArmijoOptimizer`): where a search starts (growth or reset rule,
bounds), a rate written into ``group["lr"]`` from outside as a cap, storing and publishing the
step sizes, and the interval of the amortised mode."""

from __future__ import annotations

import math

from . import _functional as F
from .. import _validate as V
from ._armijo_plan import Segment

__all__ = ["StepSizes", "AMORTIZE_WARMUP"]

#: searches before the amortised mode may start reusing the step size
AMORTIZE_WARMUP = 10


class StepSizes:
    """Step-size bookkeeping of the Armijo engine (start, caps, storage, amortize interval)."""

    def _group_added(self, group: dict) -> None:
        # step_size: the search's own step size; applied_lr: the value the optimizer last wrote into
        # group["lr"] (group["lr"] differing from it means a scheduler or the user wrote a rate, which
        # becomes lr_cap until the next write)
        group.setdefault("step_size", group["lr"])
        group.setdefault("applied_lr", group["lr"])
        group.setdefault("lr_cap", None)

    def _start_eta(self, group: dict, eta: float, since: int) -> float:
        """Step size the search starts from (growth/reset rule, then the caps)."""
        if group["reset"] == "growth":
            eta = F.grow(eta, group["growth_steps"], since)
        elif group["reset"] == "double" and self._ls["step"] % group["reset_every"] == 0:
            eta = eta * 2.0
        return min(max(eta, group["min_lr"]), group["max_lr"])

    def _sync_external_lr(self) -> None:
        """A value written into ``group['lr']`` from outside (scheduler, user) becomes the cap."""
        for group in self.param_groups:
            if group["lr"] != group["applied_lr"]:
                V.nonnegative("lr (written by a scheduler or by hand)", group["lr"])
                group["lr_cap"] = float(group["lr"])
                group["applied_lr"] = group["lr"]

    def _cap_scales(self, segs: list[Segment], starts: list[float]) -> list[float]:
        """Per segment, the factor ``q <= 1`` that brings its group under ``lr_cap``.

        A group's step size is compared with the cap: one segment's step size, or the geometric
        mean of its layers' (PLASLS), which are all scaled alike.
        """
        logs: dict = {}
        for sg, e in zip(segs, starts):
            logs.setdefault(id(sg.group), []).append(math.log(max(e, 1e-300)))
        qs = []
        for sg in segs:
            cap = sg.group.get("lr_cap")
            if cap is None:
                qs.append(1.0)
                continue
            ls_ = logs[id(sg.group)]
            gm = math.exp(sum(ls_) / len(ls_))
            qs.append(min(1.0, cap / gm) if gm > 0 else 1.0)
        return qs

    def _publish_lr(self, segs: list[Segment], applied: list[float]) -> None:
        """``group["lr"]``: the step size applied this step (geometric mean over a group's layers)."""
        logs: dict = {}
        for sg, e in zip(segs, applied):
            logs.setdefault(id(sg.group), []).append(math.log(max(e, 1e-300)))
        for group in self.param_groups:
            if id(group) in logs:
                ls_ = logs[id(group)]
                group["lr"] = math.exp(sum(ls_) / len(ls_)) if len(ls_) > 1 else math.exp(ls_[0])

    def _finish_groups(self) -> None:
        """Hook after step sizes changed (PLASLS recomputes the group's summary lr)."""

    def _update_amortize(self, eta: float, k_max: int, trials: int = 1) -> None:
        if k_max <= 1:
            return
        ls = self._ls
        le = math.log(max(eta, 1e-300))
        if ls["log_eta_fast"] is None or ls["searches"] <= AMORTIZE_WARMUP:
            # the first searches move eta by orders of magnitude (backtracking from the initial
            # guess); drift is measured from the end of this warm-up on
            ls["log_eta_fast"] = ls["log_eta_slow"] = le
        ls["log_eta_fast"] = F.ema(ls["log_eta_fast"], le, 0.9)
        ls["log_eta_slow"] = F.ema(ls["log_eta_slow"], le, 0.99)
        drift = abs(ls["log_eta_fast"] - ls["log_eta_slow"])
        ls["interval"] = F.next_interval(ls["interval"], trials, drift, k_max)
