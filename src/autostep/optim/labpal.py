"""LABPAL: large-batch parabolic approximation line search, modes "sgd" and "nsgd".

Mutschler & Zell, "Using a one dimensional parabolic model of the full-batch loss to estimate
learning rates during training", Algorithm 1, eq. 6 and 7, sections 3.3 and 4.3.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .._closure import NonFiniteLossError
from ..distributed import locals_
from . import _parabola as P
from .. import _validate as V
from ._docs import PARABOLIC_DOC
from ._labpal_direction import DirectionWindows
from ._labpal_phases import Phases
from ._parabolic_base import ParabolicOptimizer
from ._reductions import norms_of, sq_norms
from ._state import ls_property

__all__ = ["LABPAL"]


class LABPAL(Phases, DirectionWindows, ParabolicOptimizer):
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
        measuring_step (0.01): ``mu``, spacing of the three measured positions ``0, mu, 2 mu``
            (grid ``{0.1, 0.01}``; 0.01 is the published code's default).  PAL's name for ``mu``;
            ``sample_step`` is its old name here, accepted with a ``DeprecationWarning``.
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
    """ + PARABOLIC_DOC

    _state_keys = ("direction", "momentum_buffer", "win")
    _shared = ("mode", "alpha", "approx_batches", "reuse_steps", "measuring_step", "max_step",
               "total_steps", "noise_factor")
    #: older names (PAL's and LABPAL's ``mu`` now have one name; ``update_length`` was ``step_size``)
    _legacy_group_keys = {"sample_step": "measuring_step"}
    _legacy_ls = {"step_size": "update_length"}

    def __init__(self, params, lr: float = 0.0, *, momentum: float = 0.0, weight_decay: float = 0.0,
                 max_grad_norm: Optional[float] = None, mode: str = "sgd", alpha: float = 1.8,
                 approx_batches: int = 10, reuse_steps: int = 1000, measuring_step: float = 0.01,
                 max_step: float = 1.0, total_steps: Optional[int] = None,
                 noise_factor: Optional[float] = None, dataset_size: Optional[int] = None,
                 batch_size: Optional[int] = None, sample_step: Optional[float] = None):
        measuring_step = V.renamed_keyword("LABPAL", "sample_step", sample_step,
                                           "measuring_step", measuring_step, 0.01)
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
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        max_grad_norm=max_grad_norm, mode=mode, alpha=alpha,
                        approx_batches=approx_batches, reuse_steps=reuse_steps,
                        measuring_step=measuring_step, max_step=max_step, total_steps=total_steps,
                        noise_factor=noise_factor)
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
            "update_length": 0.0,  # length of the last update along the unit direction
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
        V.positive("measuring_step", group["measuring_step"])
        V.positive("max_step", group["max_step"])
        V.half_open_unit("momentum", group["momentum"])
        if group["total_steps"] is not None:
            V.positive_int("total_steps", group["total_steps"])
        V.positive("noise_factor", group["noise_factor"])

    updates = ls_property("updates", "Parameter updates performed (training-phase windows "
                                     "completed).")
    estimates = ls_property("estimates", "Successful parabola fits.")
    failed_fits = ls_property("failed_fits", "Fits that gave no estimate (the previous one kept).")
    phase = ls_property("phase", '``"approx"`` or ``"train"``: the phase the next call belongs to.')

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

    @property
    def _state_before_commit(self) -> bool:
        """An approximation call changes the direction buffers before its trials, so its undo
        record copies the per-parameter state; an update has no closure call after its first
        evaluation, and its record skips that copy (issue 13)."""
        return self._ls["phase"] == "approx"

    def _plain_nsgd_update(self, start: bool, k: int):
        """The parameters (with a gradient, per group) when this training call is an NSGD update
        along the raw gradient: one batch per update, no momentum, no clipping; else ``None``.
        Its ``||d||^2`` is then read with the start loss (one norm and one host read fewer)."""
        g0 = self.param_groups[0]
        if (g0["mode"] != "nsgd" or not start or k != 1
                or any(g["momentum"] > 0 or g["max_grad_norm"] is not None for g in self.param_groups)):
            return None
        members = self._with_grad()
        if any(p.grad.is_sparse for ps in members for p in ps):
            return None
        return members

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
        known_sq = None  # ||d||^2 of a plain NSGD update, read with the start loss
        ls = self._ls
        ev = self._evaluator(closure)
        swapped = None
        try:
            start = ls["pos"] == 0
            k = self.batch_multiplier() if start else ls["k"]
            measuring = ls["phase"] == "approx" and not start and ls["pos"] >= k
            training = ls["phase"] == "train"
            try:
                if measuring:
                    loss = ev.measure()
                elif training:
                    # an update evaluates nothing more: the start loss and the gradients'
                    # finiteness hint in one host read, and no snapshot for trials
                    loss = ev.first(read=False)
                    plain = self._plain_nsgd_update(start, k)
                    weights = None
                    if plain is not None:
                        grads = [p.grad for ps in plain for p in ps]
                        weights = self.reducer.weights([p for ps in plain for p in ps])
                    if plain is not None and grads and weights is None and not self.reducer.active:
                        # the update's ||d||^2 (d = the gradient) doubles as the finiteness hint:
                        # the per-tensor norms are read with the loss, then squared and summed
                        # in float64 here: three small device ops fewer (issue 13).  (Across
                        # ranks one scalar is averaged, as below: the number of gradients with a
                        # value need not agree between ranks.)
                        norms = ev.read_start(torch.stack(norms_of(locals_(grads))), trials=False)
                        read = sum(n * n for n in norms)
                    else:
                        if plain is not None:  # weighted local sums when sharded
                            hint = sq_norms(grads, weights)
                        else:
                            hint = V.finite_hint([p.grad for p in ev.params
                                                  if p.grad is not None and not p.grad.is_sparse])
                        read = ev.read_start(hint.reshape(1), trials=False)[0]
                    finite = math.isfinite(read)
                    known_sq = read if plain is not None else None
                else:
                    loss = ev.first()
            except NonFiniteLossError:
                return self._skip(ev, "start loss", torch.tensor(ev.loss0, device=ev.device), undo)
            if not measuring and not (training and finite) and not self._grads_finite(ev):
                return self._skip(ev, "gradient", loss, undo)
            swapped = None if measuring else self._clip_swap()
            if ls["phase"] == "approx":
                info = self._approx_call(ev, start, k)
            else:
                info = self._train_call(start, k, known_sq)
            self._unswap(swapped)
            swapped = None
            ls["step"] += 1
            ls["forwards"] += ev.forwards
            ls["backwards"] += ev.backwards
            ls["trials"] += info.get("trials", 0)
            info.update(loss=ev.loss0, forwards=ev.forwards, backwards=ev.backwards,
                        lr=self.param_groups[0]["lr"], update_length=ls["update_length"])
            self._note_written_lr()
            self.last_step = info
        except BaseException:
            self._unswap(swapped)
            self._abort_step(ev, undo)
            raise
        finally:
            self._close_step(ev)
        return loss
