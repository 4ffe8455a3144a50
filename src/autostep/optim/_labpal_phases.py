"""LABPAL's two phases (the :class:`Phases` part of :class:`~autostep.optim.labpal.LABPAL`):
the approximation phase (direction calls, the three measured losses per batch, the parabola fit
at the end of the phase) and the training phase (accumulation windows and the update with the
reused estimate).  See the class docstring for the algorithm."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .._closure import ClosureEvaluator
from .._line import Line, axpy_
from . import _parabola as P

__all__ = ["Phases"]


class Phases:
    """One call of either phase; :meth:`_end_phase` fits the parabola and switches phases."""

    def _approx_call(self, ev: ClosureEvaluator, start: bool, k: int) -> dict:
        ls = self._ls
        g0 = self.param_groups[0]
        mu = g0["measuring_step"]
        if start:
            n_calls = P.approx_calls(g0["approx_batches"], k)
            ls.update(k=k, n_calls=n_calls, sums=[0.0, 0.0, 0.0], n_meas=0, dir_norm=0.0)
            ls["window"] += 1
        pos = ls["pos"]
        info: dict = {"phase": "approx", "k": k, "updated": False, "trials": 0}
        values = None
        if pos < k:  # a direction-defining call: accumulate the gradient
            self._accumulate(new_window=start)
            if pos == k - 1:
                members = self._members()
                dirs = self._finish_direction(members, k)
                norm = self._norm(members, dirs)
                if not (norm > 0 and math.isfinite(norm)):
                    ls["pos"] = 0
                    return self._end_phase(info, aborted="zero or non-finite direction")
                ls["dir_norm"] = norm
                # the line direction is kept in the "direction" buffers for the phase
                if any(g["momentum"] > 0 for g in self.param_groups):
                    for ps, d in zip(members, dirs):
                        for p, t in zip(ps, d):
                            if self.state[p]["direction"] is not t:
                                self.state[p]["direction"] = t.clone()
                values = self._measure(ev, members, mu, norm, info)
        else:
            values = self._measure(ev, self._members(), mu, ls["dir_norm"], info)
        if values is not None:
            ls["sums"] = [s + v for s, v in zip(ls["sums"], values)]
            ls["n_meas"] += 1
        ls["pos"] = pos + 1
        info["measured"] = values is not None
        if ls["pos"] >= ls["n_calls"]:
            ls["pos"] = 0
            return self._end_phase(info)
        return info

    def _measure(self, ev: ClosureEvaluator, members: list[list], mu: float, norm: float,
                 info: dict) -> Optional[list[float]]:
        """Losses of this batch at ``s = 0, mu, 2 mu``; ``None`` if one is not finite."""
        f0 = ev.loss0
        dirs = [[self.state[p]["direction"] for p in ps] for ps in members]
        line = Line(members, dirs)
        try:
            line.move([mu / norm] * len(members))
            f1 = ev.trial()
            line.move([2.0 * mu / norm] * len(members))
            f2 = ev.trial()
        finally:
            line.restore()
            line.release()
        info["trials"] = 2
        vals = [f0, f1, f2]
        return vals if all(math.isfinite(v) for v in vals) else None

    def _end_phase(self, info: dict, aborted: Optional[str] = None) -> dict:
        ls = self._ls
        g0 = self.param_groups[0]
        mu, alpha, s_max = g0["measuring_step"], g0["alpha"], g0["max_step"]
        norm, n = ls["dir_norm"], ls["n_meas"]
        fit = {"a": math.nan, "b": math.nan, "c": math.nan, "s_min": math.nan, "ok": False,
               "n": n, "losses": None, "reason": aborted}
        upd = None
        if aborted is None and n > 0:
            means = [s / n for s in ls["sums"]]
            a, b, c = P.fit3([0.0, mu, 2.0 * mu], means)
            fit.update(a=a, b=b, c=c, losses=means)
            s_min = P.line_min(a, b)
            if s_min is not None and b < 0:
                fit.update(s_min=s_min, ok=True)
                upd = alpha * min(s_min, s_max)
            else:
                fit["reason"] = "curvature <= 0" if a <= 0 else "slope >= 0"
                if ls["est_step"] is None and min(means[1], means[2]) < means[0]:
                    upd = mu if means[1] <= means[2] else 2.0 * mu
                    fit["fallback"] = upd
        elif aborted is None:
            fit["reason"] = "no batch with three finite losses"
        if fit["ok"]:
            ls["estimates"] += 1
        else:
            ls["failed_fits"] += 1
        if upd is not None:
            ls["est_step"] = upd
            ls["est_lr"] = upd / norm
        info["fit"] = fit
        ls["fit"] = {key: None if isinstance(fit[key], float) and math.isnan(fit[key]) else fit[key]
                     for key in ("a", "b", "c", "s_min", "ok")}
        if ls["est_step"] is None:
            ls["phase"] = "approx"  # nothing to train with: measure again on the next call
        else:
            ls["phase"] = "train"
            ls["since"] = 0
            if g0["mode"] == "sgd" or upd is not None:
                self._set_lr(ls["est_lr"])
        return info

    def _train_call(self, start: bool, k: int, known_sq: float | None = None) -> dict:
        """One training call (an update once ``k`` batches are in).  ``known_sq``: ``||d||^2`` of
        a plain NSGD update, read with the start loss (``LABPAL._plain_nsgd_update``)."""
        ls = self._ls
        g0 = self.param_groups[0]
        info: dict = {"phase": "train", "k": k, "updated": False, "trials": 0}
        if start:
            ls["k"] = k
            ls["window"] += 1
        # the gradients go through the direction buffers when they are averaged or feed momentum
        buffered = k > 1 or any(g["momentum"] > 0 for g in self.param_groups)
        if buffered:
            self._accumulate(new_window=start)
        ls["pos"] += 1
        if ls["pos"] < k:
            return info
        ls["pos"] = 0
        if buffered:
            members = self._members()
            dirs = self._finish_direction(members, k)
        else:
            members = self._with_grad()
            dirs = [[p.grad for p in ps] for ps in members]
        if g0["mode"] == "sgd":
            lr = ls["est_lr"]
            length = math.nan  # ||d_t|| is not computed in SGD mode (it costs a reduction)
        else:
            if known_sq is not None and 0.0 < known_sq < math.inf:
                norm = math.sqrt(known_sq)
            else:  # (float32 squares that under- or overflowed: recomputed in float64 here)
                norm = self._norm(members, dirs)
            lr = ls["est_step"] / norm if norm > 0 and math.isfinite(norm) else 0.0
            length = ls["est_step"] if lr > 0 else 0.0
        if lr > 0:
            self._decay([(ps, g["weight_decay"], lr) for g, ps in zip(self.param_groups, members)])
            for ps, d in zip(members, dirs):
                if ps:  # (a scale beyond the parameters' dtype, from a tiny ||d||: in float64)
                    axpy_(ps, d, lr)
        self._set_lr(lr)
        ls["update_length"] = length if g0["mode"] == "nsgd" else ls["est_step"]
        ls["updates"] += 1
        ls["since"] += 1
        info["updated"] = True
        if ls["since"] >= g0["reuse_steps"]:
            ls["phase"] = "approx"
            ls["since"] = 0
        return info
