"""LABPAL: large-batch parabolic approximation line search, modes "sgd" and "nsgd".

Mutschler & Zell, "Using a one dimensional parabolic model of the full-batch loss to estimate
learning rates during training", Algorithm 1, eq. 6 and 7, sections 3.3 and 4.3.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .._closure import ClosureEvaluator, NonFiniteLossError
from .._line import Line
from . import _parabola as P
from . import _validate as V
from ._adam import sq_norm_float
from .pal import CLOSURE_DOC, _LineOptimizer

__all__ = ["LABPAL"]


class LABPAL(_LineOptimizer):
    __doc__ = """Large-batch parabolic approximation line search (LABPAL&SGD, LABPAL&NSGD).

    The optimizer alternates between two phases; **every** ``step(closure)`` call consumes one
    batch and counts as one step (the paper's definition, section 4), in both phases.

    Approximation phase (no parameter update)
        It opens on the first call and after every ``reuse_steps`` updates.  Its first ``k``
        calls (``k`` = the batch multiplier below) evaluate with grad; their gradients, averaged,
        define the line direction ``d`` (with ``momentum > 0`` the momentum direction
        ``beta * d_prev + g``), kept fixed for the whole phase.  From the ``k``-th call on, each
        call measures its batch's loss at the three positions ``s = 0, mu, 2 mu`` along the unit
        direction, ``w - s d / ||d||`` (one forward under ``torch.no_grad()`` at ``w`` and two
        trials; the ``k``-th call reuses its grad forward for ``s = 0``), and adds them to running
        sums.  After ``k * max(1, ceil(approx_batches / k))`` calls (``B_a / B_i`` batches,
        Algorithm 1 lines 10-12) the parabola through the three averaged losses gives
        ``s_min = -b / (2 a)``, capped at ``max_step``, and the estimate

        * mode ``"sgd"``: the learning rate ``lr = alpha * s_min / ||d||`` (eq. 6), reused for the
          next ``reuse_steps`` SGD updates ``w <- w - lr * d_t``;
        * mode ``"nsgd"``: the update step ``alpha * s_min``, reused for the next ``reuse_steps``
          normalised-SGD updates ``w <- w - alpha * s_min * d_t / ||d_t||``.

    Training phase
        Each update uses the gradient averaged over ``k(t)`` consecutive calls (the calls before
        the last of a window only accumulate, and change no parameter); ``d_t`` is that average or,
        with ``momentum``, the momentum buffer ``beta * d_{t-1} + avg``.

    Batch-size schedule and noise factor
        ``k(t) = 1`` for ``t <= floor(total_steps / 2)``, ``2`` for ``t <= floor(3 total_steps /
        4)``, else ``4`` (``t`` = batches consumed before the window starts), multiplied by the
        noise factor ``eps`` and rounded half up (at least 1).  Without ``total_steps`` there is
        no schedule (``k = max(1, round(eps))`` throughout).  ``eps`` is ``noise_factor`` if
        given, else eq. 7, ``128 / batch_size * dataset_size / 40000``, when both sizes are given,
        else 1.  Section 4.3 also sets the training length to ``150,000 * eps`` steps: that is
        :meth:`paper_step_budget` (pass it as ``total_steps`` to follow the paper; the optimizer
        cannot lengthen your loop itself).

    Failed fits (never an untested extreme step)
        When the curvature is not positive, the slope of the fitted parabola is not negative, no
        batch gave three finite losses, or ``||d|| = 0`` (then no trial forward is spent), the
        previous estimate is kept.  Without a previous estimate, the best *tested* position
        (``mu`` or ``2 mu``, without ``alpha``) is used if it lowered the averaged loss; otherwise
        no estimate exists and the next call opens a new approximation phase.  A batch whose trial
        loss is not finite is left out of the averages.

    Parameters (defaults: Algorithm 1, the caption of Figure 7 and appendix G.1)
        mode ("sgd"): ``"sgd"`` (LABPAL&SGD) or ``"nsgd"`` (LABPAL&NSGD).
        alpha (1.8): step size adaptation ``alpha`` of eq. 6.
        approx_batches (10): ``B_a / B_i``, batches averaged per approximation (Algorithm 1:
            ``B_a = 1280`` with ``B_i = 128``).
        reuse_steps (1000): ``s_SGD``, updates an estimate is reused for.
        sample_step (0.01): ``mu``, spacing of the three measured positions ``0, mu, 2 mu``
            (grid ``{0.1, 0.01}``; 0.01 is the published code's default).
        max_step (1.0): cap on ``s_min`` before ``alpha`` (as the published code and the paper's
            sensitivity analysis: the applied step can reach ``alpha * max_step``).
        momentum (0.0): may differ between param groups (the paper finds 0.4-0.6 helps).
        total_steps (None): the training length in steps (batches); enables the schedule.
        noise_factor (None), dataset_size (None), batch_size (None): ``eps``, see above.
        lr (0.0): **read-out only**: ``param_groups[i]["lr"]`` holds the current learning rate
            (``"sgd"``: the reused ``lr``; ``"nsgd"``: ``alpha s_min / ||d_t||`` of the last
            update).  The value passed is validated (``>= 0``) and shown until the first estimate;
            writes (LR schedulers) have no effect and raise a ``RuntimeWarning`` (once); a
            ``momentum`` written between steps (``OneCycleLR``) is used, with a warning.

    Deviations from the paper / the published code (documented choices)
        * The three positions are ``0, mu, 2 mu`` and the parabola is the exact interpolant
          (eq. 6 needs ``s_min`` of the approximated full-batch loss).  The published code measures
          at ``0, 1.77e-4, mu`` and derives slope and curvature with ``numpy.gradient``
          (first-order edges), which halves the curvature and so doubles the step.
        * Measurements are taken as the batches arrive, at the phase's fixed start point; the
          published code stores every closure and re-evaluates them at the end.  With ``k > 1`` the
          first ``k - 1`` direction batches are therefore not measured.
        * No parameter update on approximation calls (Algorithm 1; the published code stepped
          along the measured line on the last one), no averaging over the last 25 estimates and
          no "untrustworthy initial steps" (published code only, not in the paper).
        * Randomness is replayed from an RNG snapshot, never reseeded from the clock.

    Param groups
        One line through all groups (norms summed over every parameter with a gradient);
        ``momentum`` may differ per group, the other hyper-parameters are shared.  Parameters whose
        ``grad`` is ``None`` are not moved and get no state.

    State and counters
        Phase, position in the phase or accumulation window, the three loss sums, the direction
        (per-parameter ``direction`` buffer, reused as the accumulation buffer), its norm, the
        reused estimate and all counters are in ``state_dict()``; a resumed run continues
        bit-for-bit.  :attr:`forwards`, :attr:`backwards`, :attr:`trials`, :attr:`steps`,
        :attr:`updates`, :attr:`estimates`, :attr:`failed_fits`; :attr:`last_step` describes the
        last call (and ``last_step["fit"]`` the last fit when the call ended a phase).
    """ + CLOSURE_DOC

    _state_keys = ("direction", "momentum_buffer", "win")
    _shared = ("mode", "alpha", "approx_batches", "reuse_steps", "sample_step", "max_step",
               "total_steps", "noise_factor")

    def __init__(self, params, mode: str = "sgd", alpha: float = 1.8, approx_batches: int = 10,
                 reuse_steps: int = 1000, sample_step: float = 0.01, max_step: float = 1.0,
                 momentum: float = 0.0, total_steps: Optional[int] = None,
                 noise_factor: Optional[float] = None, dataset_size: Optional[int] = None,
                 batch_size: Optional[int] = None, lr: float = 0.0,
                 weight_decay: float = 0.0, max_grad_norm: Optional[float] = None):
        if noise_factor is not None and (dataset_size is not None or batch_size is not None):
            raise ValueError("give either noise_factor or dataset_size and batch_size, not both")
        if (dataset_size is None) != (batch_size is None):
            raise ValueError("dataset_size and batch_size must be given together (eq. 7 needs both)")
        if dataset_size is not None:
            V.positive_int("dataset_size", dataset_size)
            V.positive_int("batch_size", batch_size)
            noise_factor = P.noise_factor(dataset_size, batch_size)
        if noise_factor is None:
            noise_factor = 1.0
        if isinstance(mode, str):
            mode = mode.lower()
        defaults = dict(lr=lr, mode=mode, alpha=alpha, approx_batches=approx_batches,
                        reuse_steps=reuse_steps, sample_step=sample_step, max_step=max_step,
                        momentum=momentum, total_steps=total_steps, noise_factor=noise_factor)
        defaults.update(weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        ls = {
            "step": 0, "forwards": 0, "backwards": 0, "trials": 0, "updates": 0,
            "estimates": 0, "failed_fits": 0,
            "phase": "approx",  # "approx" or "train"
            "pos": 0,  # calls done in the current approximation phase / accumulation window
            "k": 1,  # batch multiplier fixed at the start of the phase / window
            "n_calls": 0,  # calls of the current approximation phase
            "window": 0,  # id of the current accumulation window (direction windows included)
            "sums": [0.0, 0.0, 0.0],  # loss sums at s = 0, mu, 2 mu
            "n_meas": 0,  # batches in the sums
            "dir_norm": 0.0,  # ||d|| of the line direction
            "since": 0,  # updates done with the current estimate
            "est_lr": None,  # reused learning rate ("sgd"), alpha s_min / ||d||
            "est_step": None,  # reused update step ("nsgd"), alpha s_min
            "step_size": 0.0,  # length of the last update along the unit direction
            # the last fit's coefficients (None: not computed); details in last_step["fit"]
            "fit": {"a": None, "b": None, "c": None, "s_min": None, "ok": False},
        }
        super().__init__(params, defaults, ls)

    # ------------------------------------------------------------------ validation / read-outs
    def _validate_group(self, group: dict) -> None:
        V.nonnegative("lr", group["lr"])
        V.choice("mode", group["mode"], ("sgd", "nsgd"))
        V.positive("alpha", group["alpha"])
        V.positive_int("approx_batches", group["approx_batches"])
        V.positive_int("reuse_steps", group["reuse_steps"])
        V.positive("sample_step", group["sample_step"])
        V.positive("max_step", group["max_step"])
        V.half_open_unit("momentum", group["momentum"])
        if group["total_steps"] is not None:
            V.positive_int("total_steps", group["total_steps"])
        V.positive("noise_factor", group["noise_factor"])

    @property
    def updates(self) -> int:
        """Parameter updates performed (training-phase windows completed)."""
        return self._ls["updates"]

    @property
    def estimates(self) -> int:
        """Successful parabola fits."""
        return self._ls["estimates"]

    @property
    def failed_fits(self) -> int:
        return self._ls["failed_fits"]

    @property
    def phase(self) -> str:
        """``"approx"`` or ``"train"``: the phase the next call belongs to."""
        return self._ls["phase"]

    @property
    def noise_factor(self) -> float:
        return self.param_groups[0]["noise_factor"]

    def batch_multiplier(self, t: Optional[int] = None) -> int:
        """``k(t)`` (schedule times noise factor) for ``t`` batches consumed (default: now)."""
        g = self.param_groups[0]
        return P.batch_multiplier(self._ls["step"] if t is None else t, g["total_steps"],
                                  g["noise_factor"])

    @staticmethod
    def paper_step_budget(dataset_size: int, batch_size: int) -> int:
        """Section 4.3: ``150,000 * eps`` training steps for the given sizes (eq. 7)."""
        return P.paper_step_budget(P.noise_factor(dataset_size, batch_size))

    @torch.no_grad()
    def _init_state(self) -> None:
        for group in self.param_groups:
            for p in self._params_with_grad(group):
                st = self.state[p]
                st.setdefault("direction", torch.zeros_like(p))
                st.setdefault("win", 0)  # no window yet (window ids start at 1)
                if group["momentum"] > 0:
                    st.setdefault("momentum_buffer", torch.zeros_like(p))

    # ------------------------------------------------------------------ helpers
    def _members(self) -> list[list]:
        """Per group, the parameters that received a gradient in the current window."""
        w = self._ls["window"]
        return [[p for p in g["params"] if self.state[p].get("win") == w] if self.state else []
                for g in self.param_groups]

    def _accumulate(self, new_window: bool) -> None:
        w = self._ls["window"]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                buf = st.get("direction")
                # new tensors, never in place: a call that raises later restores the old buffers
                if buf is None or new_window or st.get("win") != w:
                    st["direction"] = p.grad.detach().clone()
                else:
                    st["direction"] = torch.add(buf, p.grad)
                st["win"] = w

    def _finish_direction(self, members: list[list], k: int) -> list[list]:
        """Average the window's buffers in place, apply momentum; returns the directions."""
        dirs = []
        for group, ps in zip(self.param_groups, members):
            bufs = [self.state[p]["direction"] for p in ps]
            if k > 1 and bufs:
                bufs = list(torch._foreach_mul(bufs, 1.0 / k))
                for p, b in zip(ps, bufs):
                    self.state[p]["direction"] = b
            beta = group["momentum"]
            if beta > 0 and ps:
                moms = []
                for p, b in zip(ps, bufs):
                    st = self.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = b.clone()
                    else:
                        st["momentum_buffer"] = st["momentum_buffer"].mul(beta).add_(b)
                    moms.append(st["momentum_buffer"])
                dirs.append(moms)
            else:
                dirs.append(bufs)
        return dirs

    def _clip_swap(self):
        """``max_grad_norm``: put clipped copies into ``.grad`` for this call (undone by _unswap)."""
        ps = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        clip = self._clip_coef([p.grad for p in ps], ps)
        if clip >= 1.0:
            return None
        orig = [p.grad for p in ps]
        for p, g in zip(ps, torch._foreach_mul(orig, clip)):
            p.grad = g
        return ps, orig

    @staticmethod
    def _unswap(swapped) -> None:
        if swapped is not None:
            for p, g in zip(*swapped):
                p.grad = g

    def _norm(self, members: list[list], dirs: list[list]) -> float:
        """``||d||`` over all groups: local sums weighted for the shards of sharded (FSDP)
        parameters, rank-averaged (the global norm, the same on every rank)."""
        flat_p = [p for ps in members for p in ps]
        # scale-safe (float64 where float32 over- or underflows, issue 11 item 9)
        sq = sq_norm_float([t for d in dirs for t in d], self.reducer.weights(flat_p))
        sq = self.reducer.mean([sq])[0]
        return math.sqrt(sq) if sq >= 0 else math.nan

    def _set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], torch.Tensor]] = None) -> torch.Tensor:
        """Consume one batch; ``closure`` returns its loss (see the class docstring).

        Returns the loss at the current parameters (the call's first evaluation, detached).  A
        non-finite start loss or gradient skips the call before anything changes (it does not
        count as a step); a call that raises leaves the optimizer as it was.  ``step(None)`` with
        all-zero gradients only creates the state (torch's distributed checkpoint helpers call it
        so) and returns ``None``.
        """
        if self._init_call(closure):
            return None
        undo = self._begin_step()
        self._warn_external_writes()
        ls = self._ls
        ev = self._evaluator(closure)
        swapped = None
        try:
            start = ls["pos"] == 0
            k = self.batch_multiplier() if start else ls["k"]
            measuring = ls["phase"] == "approx" and not start and ls["pos"] >= k
            try:
                loss = ev.measure() if measuring else ev.first()
            except NonFiniteLossError:
                return self._skip(ev, "start loss", torch.tensor(ev.loss0, device=ev.device), undo)
            if not measuring and not self._grads_finite(ev):
                return self._skip(ev, "gradient", loss, undo)
            swapped = None if measuring else self._clip_swap()
            if ls["phase"] == "approx":
                info = self._approx_call(ev, start, k)
            else:
                info = self._train_call(start, k)
            self._unswap(swapped)
            swapped = None
            ls["step"] += 1
            ls["forwards"] += ev.forwards
            ls["backwards"] += ev.backwards
            ls["trials"] += info.get("trials", 0)
            info.update(loss=ev.loss0, forwards=ev.forwards, backwards=ev.backwards,
                        lr=self.param_groups[0]["lr"], step_size=ls["step_size"])
            self._note_written_lr()
            self.last_step = info
        except BaseException:
            self._unswap(swapped)
            ev.abort()
            undo.restore(self)
            raise
        finally:
            ev.finish()
        return loss

    def _approx_call(self, ev: ClosureEvaluator, start: bool, k: int) -> dict:
        ls = self._ls
        g0 = self.param_groups[0]
        mu = g0["sample_step"]
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
        mu, alpha, s_max = g0["sample_step"], g0["alpha"], g0["max_step"]
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

    def _train_call(self, start: bool, k: int) -> dict:
        ls = self._ls
        g0 = self.param_groups[0]
        info: dict = {"phase": "train", "k": k, "updated": False, "trials": 0}
        if start:
            ls["k"] = k
            ls["window"] += 1
        if k > 1:
            self._accumulate(new_window=start)
        ls["pos"] += 1
        if ls["pos"] < k:
            return info
        ls["pos"] = 0
        if k > 1:
            members = self._members()
            dirs = self._finish_direction(members, k)
        else:
            members = self._with_grad()
            if any(g["momentum"] > 0 for g in self.param_groups):
                ls_w = ls["window"]
                for ps in members:
                    for p in ps:
                        st = self.state[p]
                        st["direction"] = p.grad.detach().clone()
                        st["win"] = ls_w
                dirs = self._finish_direction(members, 1)
            else:
                dirs = [[p.grad for p in ps] for ps in members]
        if g0["mode"] == "sgd":
            lr = ls["est_lr"]
            length = math.nan  # ||d_t|| is not computed in SGD mode (it costs a reduction)
        else:
            norm = self._norm(members, dirs)
            lr = ls["est_step"] / norm if norm > 0 and math.isfinite(norm) else 0.0
            length = ls["est_step"] if lr > 0 else 0.0
        if lr > 0:
            self._decay([(ps, g["weight_decay"], lr) for g, ps in zip(self.param_groups, members)])
            for ps, d in zip(members, dirs):
                if ps:
                    torch._foreach_add_(ps, d, alpha=-lr)
        self._set_lr(lr)
        ls["step_size"] = length if g0["mode"] == "nsgd" else ls["est_step"]
        ls["updates"] += 1
        ls["since"] += 1
        info["updated"] = True
        if ls["since"] >= g0["reuse_steps"]:
            ls["phase"] = "approx"
            ls["since"] = 0
        return info
