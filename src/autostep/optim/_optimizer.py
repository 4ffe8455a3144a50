"""The base class of every autostep optimizer (Armijo family, PAL, LABPAL).

:class:`AutostepOptimizer` validates every param group when it is added, enforces the
hyper-parameters that must agree across groups, exposes the pass counters, and keeps the
optimizer-level state ``_ls`` (counters, phase, EMAs, amortize interval; anything that is not
per-parameter) in the first param group (:mod:`autostep.optim._state`).  Saving and loading are
in :mod:`autostep.optim._checkpoint`.

It also carries the fault handling every optimizer shares (issue 11):

* construction refuses complex parameters and a parameter listed twice;
* :meth:`AutostepOptimizer._begin_step` records what a step may change
  (:class:`~autostep.optim._state.StepUndo`), so a step that raises leaves the optimizer exactly
  as before the call;
* :meth:`AutostepOptimizer._check_step_lrs` refuses a NaN/inf/non-positive ``lr`` before a step;
* :meth:`AutostepOptimizer._skip` counts and reports a step skipped for a non-finite loss or
  gradient.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.optim import Optimizer

from .._closure import ClosureEvaluator, model_buffers
from ..distributed import Reducer
from .. import _validate as V
from .._stack import outside_level
from ._checkpoint import CheckpointMixin
from ._clip_decay import ClipAndDecay
from ._state import OPTIONAL_LS, STATE_KEY, StepUndo, ls_property

__all__ = ["AutostepOptimizer", "StepUndo", "STATE_KEY"]


#: what :meth:`AutostepOptimizer._warn_scale` advises by default
SCALE_ADVICE = ("If the loss is scaled far from 1 (float32 squares overflow for |g| above ~1e19 and "
                "underflow below ~1e-19), rescale it, e.g. divide it by its typical value.")


class AutostepOptimizer(ClipAndDecay, CheckpointMixin, Optimizer):
    """Base class: subclasses implement ``_validate_group``, ``_init_state`` and ``step``."""

    #: ``step()`` needs a loss closure (or one bound with :meth:`set_closure`); read through
    #: :func:`autostep._closure.needs_closure` by the registry and the integrations
    step_requires_closure: bool = True
    #: hyper-parameters that must have one value in every param group (one search covers them all)
    _shared: tuple = ()

    #: keys a parameter's entry in ``state`` may hold (checked by ``load_state_dict``)
    _state_keys: tuple = ()
    #: ``lr`` written between steps may be 0 (a warm-up scheduler's first cap for the Armijo family,
    #: the read-out of a skipped step for PAL and LABPAL); NaN, inf and negative values never are
    _lr_may_be_zero: bool = True
    #: True while a loaded group is validated (relations a scheduler may break are not enforced)
    _loading: bool = False

    def __init__(self, params, defaults: dict, ls: dict):
        ls.setdefault("optimizer", type(self).__name__)
        for key in OPTIONAL_LS:
            ls.setdefault(key, 0)
        super().__init__(params, defaults)
        self.param_groups[0][STATE_KEY] = ls
        self.reducer = Reducer()
        self.last_step: dict = {}

    @property
    def _ls(self) -> dict:
        """The optimizer-level state (lives in ``param_groups[0]["autostep"]``)."""
        return self.param_groups[0][STATE_KEY]

    # ------------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict) -> None:
        if self.param_groups and isinstance(param_group, dict) and STATE_KEY in param_group:
            raise ValueError(
                f"a param group must not carry the key {STATE_KEY!r}: it holds the optimizer's own "
                "state in the first group; build new groups from the parameters and "
                "hyper-parameters only"
            )
        if isinstance(param_group, dict) and any(k in param_group for k in self._legacy_group_keys):
            param_group = self._rename_legacy_keys(param_group)
        n = len(self.param_groups)
        with warnings.catch_warnings():
            # torch only warns about a parameter listed twice; we refuse it below with a clear error
            warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
            super().add_param_group(param_group)
        try:
            group = self.param_groups[-1]
            self._check_params(group["params"], n)
            self._validate_group(group)
            self._validate_standard(group)
            first = self.param_groups[0]
            for key in self._shared:
                if group[key] != first[key]:
                    raise ValueError(
                        f"{key} must be the same in every param group (one search covers all "
                        f"groups); got {first[key]!r} and {group[key]!r}"
                    )
            self._group_added(group)
        except BaseException:
            del self.param_groups[n:]  # a refused group is not kept
            raise

    def _rename_legacy_keys(self, param_group: dict) -> dict:
        """A param group given with a hyper-parameter's old name: the new name, and a
        ``DeprecationWarning`` (both names at once is a ``TypeError``)."""
        param_group = dict(param_group)
        for old, new in self._legacy_group_keys.items():
            if old not in param_group:
                continue
            if new in param_group:
                raise TypeError(f"a param group of {type(self).__name__} has both {old!r} and "
                                f"{new!r}; give only {new!r} ({old!r} is its old name)")
            warnings.warn(f"{type(self).__name__}: the param-group key {old!r} is now called "
                          f"{new!r}; the old name will be removed", DeprecationWarning, stacklevel=4)
            param_group[new] = param_group.pop(old)
        return param_group

    def _check_params(self, params: list, index: int) -> None:
        seen: dict[int, int] = {}
        for i, p in enumerate(params):
            if id(p) in seen:
                raise ValueError(
                    f"param group {index} lists the same parameter (shape {tuple(p.shape)}) twice, "
                    f"at positions {seen[id(p)]} and {i}; it would be updated twice per step. Pass "
                    "each parameter once (e.g. list(dict.fromkeys(params)) removes repeats)."
                )
            seen[id(p)] = i
            if p.is_complex():
                raise ValueError(
                    f"{type(self).__name__} does not support complex parameters (param group {index}, "
                    f"position {i}, dtype {p.dtype}). Optimize torch.view_as_real(p) as a real "
                    "parameter instead, e.g. keep nn.Parameter(torch.view_as_real(z)) and use "
                    "torch.view_as_complex on it in the forward."
                )

    def _validate_group(self, group: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _group_added(self, group: dict) -> None:
        """Hook after a group was added and validated (also after ``load_state_dict``)."""

    # ------------------------------------------------------------------ checks before a step
    def _check_step_lrs(self) -> None:
        """Refuse a NaN/inf/out-of-range ``lr`` written since the last step (scheduler, user)."""
        for i, group in enumerate(self.param_groups):
            V.step_lr(i, group["lr"], self._lr_may_be_zero)

    #: whether a step writes per-parameter state before its last closure call (then the undo
    #: record copies every parameter's state dict; otherwise only which parameters have state)
    _state_before_commit: bool = True

    def _begin_step(self) -> StepUndo:
        """Checks before a step changes anything, and the record that undoes a failed step.

        ``.grad`` is not recorded: every step evaluates its closure through a
        :class:`~autostep._closure.ClosureEvaluator`, which puts the ``.grad`` fields back on any
        failure (``abort()`` after its start, itself during it)."""
        self._check_step_lrs()
        return StepUndo(self, state=self._state_before_commit, grads=False)

    def _abort_step(self, ev, undo: StepUndo, line=None) -> None:
        """A step that raises: parameters (``line``, the step's :class:`~autostep._line.Line`),
        the evaluations' side effects (buffers, ``.grad``, generators) and the optimizer's state
        back to before the step."""
        if line is not None:
            line.restore()
        ev.abort()
        undo.restore(self)

    @staticmethod
    def _close_step(ev, line=None) -> None:
        """Whatever the outcome: the generators where the first evaluation left them, and the
        line's exclusive hold on the parameters released."""
        ev.finish()
        if line is not None:
            line.release()

    def _grads_finite(self, ev) -> bool:
        """Whether every gradient the closure produced is finite (agreed over ranks)."""
        grads = [p.grad for p in ev.params if p.grad is not None and not p.grad.is_sparse]
        # the fast test proves finiteness; only a non-finite result (an inf/NaN gradient, or
        # squares overflowing float32) pays for the exact, slow one (rank-agreed: every rank sees
        # the same averaged hint)
        if math.isfinite(ev.reduce([V.finite_hint(grads)])[0]):
            return True
        return math.isfinite(ev.reduce([V.tensor_list_finite(grads)])[0])

    def _skip(self, ev, what: str, loss: torch.Tensor, undo: "StepUndo | None" = None) -> torch.Tensor:
        """Count a step skipped because its start loss or gradient is not finite; returns ``loss``.

        Nothing of the optimizer changed: parameters, moments, step counters, EMAs and step sizes
        are as before.  The passes spent are counted (:attr:`forwards`, :attr:`backwards`); the
        closure's (non-finite) gradient is left in ``.grad`` for inspection.
        """
        if undo is not None:  # whatever the step prepared (PLASLS's first partition) is undone
            undo.restore(self, grads=False)
        ls = self._ls
        ls["skipped"] += 1
        ls["nonfinite"] += 1
        ls["forwards"] += ev.forwards
        ls["backwards"] += ev.backwards
        self.last_step = {"loss": ev.loss0, "trials": 0, "skipped": f"non-finite {what}",
                          "accepted": False, "forwards": ev.forwards, "backwards": ev.backwards,
                          "step_sizes": [g["lr"] for g in self.param_groups]}
        warnings.warn(
            f"{type(self).__name__}.step: the {what} is not finite (NaN or inf); the step was "
            "skipped and nothing in the optimizer changed (counted in skipped_steps and "
            "nonfinite_steps). With mixed precision this happens now and then (GradScaler lowers "
            "its scale); if every step is skipped, check the data and the model for NaN/inf.",
            RuntimeWarning,
            stacklevel=outside_level(),  # the caller's step() line
        )
        return loss

    def _warn_scale(self, why: str, advice: str | None = None) -> None:
        """Say why a step moved nothing when the loss scale is extreme (issue 11 item 9); once per
        optimizer and reason (``last_step["scale"]`` says it every time).  ``advice``: what to do,
        when it is not the loss-scale advice (:data:`SCALE_ADVICE`)."""
        seen = self.__dict__.setdefault("_scale_warned", set())
        if why in seen:
            return
        seen.add(why)
        advice = SCALE_ADVICE if advice is None else advice
        warnings.warn(
            f"{type(self).__name__}.step: {why}, so the step moved nothing. {advice}",
            RuntimeWarning,
            stacklevel=outside_level(),
        )

    skipped_steps = ls_property("skipped", "Steps that left the parameters unchanged (see the "
                                           "class for the reasons it counts).")
    nonfinite_steps = ls_property("nonfinite", "Steps skipped because the start loss or the "
                                               "gradient was NaN or infinite.")

    def _params_with_grad(self, group: dict) -> list:
        return [p for p in group["params"] if p.grad is not None]

    # ------------------------------------------------------------------ closures
    def _evaluator(self, closure, grad_scaler=None):
        """A :class:`~autostep._closure.ClosureEvaluator` for one step, with the model buffers
        found once per optimizer (``step()`` without a closure uses the one bound with
        :meth:`set_closure`, on the gradients already computed)."""
        params = self._all_params()
        bound = self.__dict__.get("_bound_closure")
        given = closure is None and bound is not None
        return ClosureEvaluator(bound if given else closure, params, self.reducer,
                                buffers=model_buffers(self, params), grad_scaler=grad_scaler,
                                owner=self, given=given)

    def set_closure(self, closure) -> None:
        """Bind a loss-only closure that ``step()`` uses when it is called without one.

        For loops and frameworks that call ``backward()`` themselves and then ``optimizer.step()``
        with no argument (the Hugging Face Trainer, accelerate, a plain loop): the gradients in
        ``.grad`` -- accumulated and clipped as the loop made them -- are the step's gradients, and
        ``closure()`` (the mini-batch loss at the current parameters, no ``backward()``) is
        evaluated under ``torch.no_grad()`` for the start loss and every trial.  Bind the current
        batch before each ``step()``, e.g. ``opt.set_closure(lambda: loss_fn(model(x), y))``;
        ``set_closure(None)`` unbinds.  The binding is not saved in ``state_dict()``.
        """
        if closure is not None and not callable(closure):
            raise TypeError(f"set_closure expects a callable returning the loss, got {closure!r}")
        self.__dict__["_bound_closure"] = closure

    # ------------------------------------------------------------------ read-outs
    def _all_params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    forwards = ls_property("forwards", "Forward passes (closure calls) since construction.")
    backwards = ls_property("backwards", "Backward passes since construction.")
    trials = ls_property("trials", "Trial evaluations (forwards under no_grad at moved parameters) "
                                   "since construction.")
    steps = ls_property("step", "Completed ``step`` calls.")
