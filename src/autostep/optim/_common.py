"""Plumbing shared by every autostep optimizer (Armijo family, PAL, LABPAL).

:class:`AutostepOptimizer` validates every param group when it is added, enforces the
hyper-parameters that must agree across groups, exposes the pass counters, and keeps the
optimizer-level state ``_ls`` (counters, phase, EMAs, amortize interval; anything that is not
per-parameter).

Where the state lives
    ``_ls`` is a plain dict stored *in the first param group*, under the key ``"autostep"``
    (:data:`STATE_KEY`), the way Prodigy and schedule-free keep their step-level numbers in
    ``param_groups``.  Per-parameter buffers are in torch's ``state``.  ``state_dict()`` therefore
    has only torch's two keys, ``state`` and ``param_groups``, and torch's distributed checkpoint
    helpers (``get_optimizer_state_dict`` / ``set_optimizer_state_dict``, which keep exactly those
    two) round-trip everything.  Every value in it is an int, float, bool, str, ``None``, a list of
    those or a dict of those -- no NaN (``None`` stands for "not computed"), so saved groups compare
    equal to themselves after a checkpoint round trip.

Torch's state initialisation
    ``torch.distributed.checkpoint.state_dict`` creates an optimizer's state by setting every
    gradient to zero and calling ``step(closure=None)``.  :meth:`AutostepOptimizer._init_call`
    recognises that call: it creates the per-parameter buffers a trained optimizer has (zero
    moments, zero direction buffers) and changes nothing else -- no counter, no parameter.

It also carries the fault handling every optimizer shares (issue 11):

* construction refuses complex parameters and a parameter listed twice;
* :class:`StepUndo` records what a ``step`` may change (the side state, the param groups, the
  per-parameter state dicts, ``.grad``) so that a step that raises -- an exception or a
  ``KeyboardInterrupt`` in a trial, a closure that breaks the contract -- puts all of it back and
  the optimizer is exactly as before the call;
* :meth:`AutostepOptimizer._check_step_lrs` refuses a NaN/inf/non-positive ``lr`` before a step;
* :meth:`AutostepOptimizer.load_state_dict` validates what it loads (optimizer class, keys,
  hyper-parameters, tensor shapes) before changing anything.

Rule for the code of every step: a tensor held in ``self.state`` is never modified in place before
the step's last fallible call (closure evaluation); new values are computed into fresh tensors and
assigned, or written in place only in the commit part at the end.  Values in ``_ls`` and in the
param groups are replaced, not mutated (lists are copied one level by :class:`StepUndo`).
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch.optim import Optimizer

from .._closure import ClosureEvaluator, model_buffers
from ..distributed import Reducer, local
from . import _validate as V
from ._adam import sq_norm_float

__all__ = ["AutostepOptimizer", "StepUndo", "STATE_KEY"]

#: key of the optimizer-level state in ``param_groups[0]``
STATE_KEY = "autostep"


def _copy1(d: dict) -> dict:
    """Copy of ``d`` with list and dict values copied one level (cheap; enough for our state)."""
    return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for k, v in d.items()}


def _copy_group(g: dict) -> dict:
    """:func:`_copy1` of a param group, with its optimizer-level state dict copied one level too."""
    out = _copy1(g)
    if isinstance(g.get(STATE_KEY), dict):
        out[STATE_KEY] = _copy1(g[STATE_KEY])
    return out


#: side-state counters added by the fault handling; state dicts saved before it lack them
_OPTIONAL_LS = ("skipped", "nonfinite", "stalled")


class StepUndo:
    """Everything a step may change, recorded before it starts, put back by :meth:`restore`.

    Parameters themselves are restored by the step's :class:`~autostep._line.Line` (trial points are
    rebuilt from a saved copy); this records the rest: every param group's values (the
    optimizer-level state ``_ls`` in the first one included), the per-parameter state dicts
    (shallow: tensors are referenced, which is enough because steps never modify state tensors in
    place before they commit), each parameter's ``.grad`` object, and ``last_step``.
    """

    __slots__ = ("groups", "state", "grads", "last_step")

    def __init__(self, opt: "AutostepOptimizer") -> None:
        self.groups = [_copy_group(g) for g in opt.param_groups]
        self.state = {p: dict(s) for p, s in opt.state.items()}
        self.grads = [(p, p.grad) for p in opt._all_params()]
        self.last_step = opt.last_step

    def restore(self, opt: "AutostepOptimizer", grads: bool = True) -> None:
        """Put everything back (``grads=False``: all but the ``.grad`` fields)."""
        for group, saved in zip(opt.param_groups, self.groups):
            group.clear()
            group.update(saved)
        for p in [p for p in opt.state if p not in self.state]:
            del opt.state[p]
        for p, saved in self.state.items():
            st = opt.state[p]
            st.clear()
            st.update(saved)
        if grads:
            for p, g in self.grads:
                if p.grad is not g:
                    p.grad = g
        opt.last_step = self.last_step


class AutostepOptimizer(Optimizer):
    """Base class: subclasses implement ``_validate_group``, ``_init_state`` and ``step``."""

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
        for key in _OPTIONAL_LS:
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

    def _validate_standard(self, group: dict) -> None:
        """``weight_decay`` (per group) and ``max_grad_norm`` (one value for all groups)."""
        group.setdefault("weight_decay", 0.0)
        group.setdefault("max_grad_norm", None)
        V.nonnegative("weight_decay", group["weight_decay"])
        if group["max_grad_norm"] is not None:
            V.positive("max_grad_norm", group["max_grad_norm"])
        first = self.param_groups[0]
        if group is not first and group["max_grad_norm"] != first.get("max_grad_norm"):
            raise ValueError(
                "max_grad_norm must be the same in every param group (the norm is taken over all "
                f"parameters, as torch.nn.utils.clip_grad_norm_ does); got "
                f"{first.get('max_grad_norm')!r} and {group['max_grad_norm']!r}"
            )

    # ------------------------------------------------------------------ clipping and weight decay
    def _clip_coef(self, grads: list, params: list | None = None) -> float:
        """``max_grad_norm / ||g||`` when the total gradient norm exceeds ``max_grad_norm``, else 1.

        The norm is taken over every gradient of the step (all groups), as
        ``torch.nn.utils.clip_grad_norm_`` does; a non-finite norm is left to the step's own checks.
        """
        mx = self.param_groups[0].get("max_grad_norm")
        if mx is None or not grads:
            return 1.0
        # summed over the shards of sharded (FSDP) parameters, ``params`` being the grads' owners
        weights = self.reducer.weights(params) if params is not None else None
        norm = math.sqrt(self.reducer.global_sums([sq_norm_float(grads, weights)])[0])
        if not math.isfinite(norm) or norm <= mx:
            return 1.0
        return mx / (norm + 1e-6)

    @torch.no_grad()
    def _decay(self, params_per_seg: list, w0s: list | None = None) -> None:
        """Decoupled weight decay, as AdamW: ``w <- w - lr * weight_decay * w0`` per segment.

        ``params_per_seg``: ``(params, weight_decay, lr)`` per segment (group or layer).

        ``w0s`` are the start points (the step has already been applied); without them the
        parameters are at the start point and are scaled by ``1 - lr * weight_decay``.
        """
        for j, (ps, wd, lr) in enumerate(params_per_seg):
            if not wd or not ps or not lr:
                continue
            if w0s is None:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            else:
                torch._foreach_add_(ps, w0s[j], alpha=-lr * wd)

    def _group_added(self, group: dict) -> None:
        """Hook after a group was added and validated (also after ``load_state_dict``)."""

    # ------------------------------------------------------------------ state
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        for key in ("_autostep_model_buffers", "_autostep_own_grads", "_bound_closure"):
            state.pop(key, None)  # references to the model and the current batch, not state
        state["last_step"] = self.last_step
        return state

    def __setstate__(self, state: dict) -> None:
        # torch's load_state_dict also calls __setstate__, with state and param_groups only
        state = dict(state)
        ls = state.pop("_ls", None)  # pickles from before the state moved into param_groups
        last = state.pop("last_step", None)
        super().__setstate__(state)
        if ls is not None and self.param_groups and STATE_KEY not in self.param_groups[0]:
            self.param_groups[0][STATE_KEY] = ls
        if last is not None:
            self.last_step = last
        if not hasattr(self, "reducer"):
            self.reducer = Reducer()

    def state_dict(self) -> dict:
        """Torch's ``state`` and ``param_groups``; the optimizer-level state is in the first group.

        Mutable group values (the state dict, per-layer lists) are copied, so the returned dict is a
        snapshot that later steps do not change.
        """
        sd = super().state_dict()
        for g in sd["param_groups"]:
            for k, v in g.items():
                if k != "params" and isinstance(v, (dict, list)):
                    g[k] = copy.deepcopy(v)
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict saved by ``state_dict()`` of the same optimizer class.

        Everything is checked before anything changes: the optimizer class, the number and sizes
        of param groups, that each group has every hyper-parameter of this class with a valid value
        (``lr`` included), the optimizer-level state's keys, the keys and tensor shapes of every
        parameter's state.  A mismatch raises :class:`ValueError` naming it, and the optimizer
        stays as it was.  Checkpoints that kept the optimizer-level state under a top-level
        ``"autostep"`` key (before it moved into ``param_groups[0]``) still load.
        """
        if not isinstance(state_dict, dict):
            self._refuse(f"it needs the dict state_dict() returns, got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        legacy = state_dict.pop("autostep", None)  # checkpoints that kept it at the top level
        groups = state_dict.get("param_groups")
        if (legacy is not None and isinstance(groups, (list, tuple)) and groups
                and isinstance(groups[0], dict) and STATE_KEY not in groups[0]):
            state_dict["param_groups"] = [dict(groups[0], **{STATE_KEY: legacy})] + list(groups[1:])
        self._validate_state_dict(state_dict)
        ls = copy.deepcopy(state_dict["param_groups"][0][STATE_KEY])
        ls.setdefault("optimizer", type(self).__name__)
        for key in _OPTIONAL_LS:
            ls.setdefault(key, 0)
        undo = StepUndo(self)
        old_state, old_groups = self.state, self.param_groups
        try:
            super().load_state_dict(state_dict)
            self.param_groups[0][STATE_KEY] = ls
            for group in self.param_groups[1:]:
                group.pop(STATE_KEY, None)
            for group in self.param_groups:
                self._group_added(group)
        except BaseException:
            self.state, self.param_groups = old_state, old_groups
            undo.restore(self)
            raise

    # ------------------------------------------------------------------ validation of loads
    def _refuse(self, what: str) -> None:
        raise ValueError(
            f"{type(self).__name__}.load_state_dict: {what}. Nothing was loaded; the optimizer is "
            "unchanged. Load a state dict saved by the same optimizer class for the same parameters."
        )

    def _validate_state_dict(self, sd: dict) -> None:
        name = type(self).__name__
        for key in ("state", "param_groups"):
            if key not in sd:
                self._refuse(f"the state dict has no {key!r} entry (keys: {sorted(sd)})")
        groups = sd["param_groups"]
        if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
            self._refuse("'param_groups' must be a list of dicts")
        ls = groups[0].get(STATE_KEY) if groups else None
        if ls is None:
            self._refuse(
                f"param group 0 has no {STATE_KEY!r} entry (the optimizer-level state every autostep "
                "optimizer saves there); it was not saved by an autostep optimizer"
            )
        if not isinstance(ls, dict):
            self._refuse(f"the {STATE_KEY!r} entry must be a dict, got {type(ls).__name__}")
        saved_by = ls.get("optimizer")
        ours = {c.__name__ for c in type(self).__mro__}
        if saved_by is not None and saved_by not in ours:
            self._refuse(f"it was saved by {saved_by}, not by {name}")
        missing = sorted(set(self._ls) - set(ls) - {"optimizer", *_OPTIONAL_LS})
        extra = sorted(set(ls) - set(self._ls) - {"optimizer", "warned_no_grad"})
        if missing or extra:
            self._refuse(
                f"its optimizer-level state (param_groups[0][{STATE_KEY!r}]) does not belong to "
                f"{name}" + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else "")
            )
        if len(groups) != len(self.param_groups):
            self._refuse(f"it has {len(groups)} param groups, this optimizer has {len(self.param_groups)}")
        # our hyper-parameters (torch adds bookkeeping keys such as "differentiable" to defaults)
        required = set(self.defaults) - {"differentiable", "foreach", "fused", "capturable",
                                         "maximize"}
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if "params" not in saved:
                self._refuse(f"param group {i} has no 'params' entry")
            if len(saved["params"]) != len(group["params"]):
                self._refuse(
                    f"param group {i} has {len(saved['params'])} parameters, this optimizer's has "
                    f"{len(group['params'])}"
                )
            missing = sorted(required - set(saved))
            if missing:
                self._refuse(
                    f"param group {i} lacks {missing} (hyper-parameters of {name}); it was not saved "
                    f"by {name} (it has {sorted(k for k in saved if k != 'params')})"
                )
            probe = dict(saved)
            probe["params"] = group["params"]
            try:
                self._loading = True
                self._validate_group(probe)
                V.nonnegative("weight_decay", probe.get("weight_decay", 0.0))
                if probe.get("max_grad_norm") is not None:
                    V.positive("max_grad_norm", probe["max_grad_norm"])
                self._validate_loaded_group(i, probe)
                V.step_lr(i, probe["lr"], self._lr_may_be_zero)
            except (ValueError, TypeError, KeyError) as exc:
                self._refuse(f"param group {i} is invalid: {exc}")
            finally:
                self._loading = False
        self._validate_param_state(sd["state"], groups)

    def _validate_loaded_group(self, index: int, group: dict) -> None:
        """Extra checks of a loaded group (step-level values a subclass keeps there)."""

    def _validate_param_state(self, state: Any, groups: list) -> None:
        if not isinstance(state, dict):
            self._refuse(f"'state' must be a dict, got {type(state).__name__}")
        params: dict = {}
        for saved, group in zip(groups, self.param_groups):
            for pid, p in zip(saved["params"], group["params"]):
                params[pid] = p
        allowed = set(self._state_keys)
        for pid, st in state.items():
            if pid not in params:
                self._refuse(f"'state' has an entry for parameter {pid!r}, which no param group lists")
            p = params[pid]
            if not isinstance(st, dict):
                self._refuse(f"the state of parameter {pid!r} must be a dict, got {type(st).__name__}")
            unknown = sorted(set(st) - allowed)
            if unknown:
                self._refuse(
                    f"the state of parameter {pid!r} has keys {unknown} that {type(self).__name__} "
                    f"does not keep (it keeps {sorted(allowed) or 'no per-parameter state'})"
                )
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    if value.dim() != 0 and tuple(value.shape) != tuple(p.shape):
                        self._refuse(
                            f"state[{pid!r}][{key!r}] has shape {tuple(value.shape)}, the parameter "
                            f"has shape {tuple(p.shape)}"
                        )
                    if value.is_complex() or not (value.is_floating_point() or value.dim() == 0):
                        self._refuse(f"state[{pid!r}][{key!r}] has dtype {value.dtype}")

    # ------------------------------------------------------------------ checks before a step
    def _check_step_lrs(self) -> None:
        """Refuse a NaN/inf/out-of-range ``lr`` written since the last step (scheduler, user)."""
        for i, group in enumerate(self.param_groups):
            V.step_lr(i, group["lr"], self._lr_may_be_zero)

    def _begin_step(self) -> StepUndo:
        """Checks before a step changes anything, and the record that undoes a failed step."""
        self._check_step_lrs()
        return StepUndo(self)

    def _grads_finite(self, ev) -> bool:
        """Whether every gradient the closure produced is finite (agreed over ranks)."""
        grads = [p.grad for p in ev.params if p.grad is not None and not p.grad.is_sparse]
        total = V.tensor_list_finite(grads)
        return math.isfinite(ev.reduce([total])[0])

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
            stacklevel=4,  # _skip <- step <- torch.no_grad's wrapper <- the caller
        )
        return loss

    def _warn_scale(self, why: str) -> None:
        """Say why a step moved nothing when the loss scale is extreme (issue 11 item 9); once per
        optimizer and reason (``last_step["scale"]`` says it every time)."""
        seen = self.__dict__.setdefault("_scale_warned", set())
        if why in seen:
            return
        seen.add(why)
        warnings.warn(
            f"{type(self).__name__}.step: {why}, so the step moved nothing. If the loss is "
            "scaled far from 1 (float32 squares overflow for |g| above ~1e19 and underflow below "
            "~1e-19), rescale it, e.g. divide it by its typical value.",
            RuntimeWarning,
            stacklevel=4,
        )

    @property
    def skipped_steps(self) -> int:
        """Steps that left the parameters unchanged (see the class for the reasons it counts)."""
        return self._ls["skipped"]

    @property
    def nonfinite_steps(self) -> int:
        """Steps skipped because the start loss or the gradient was NaN or infinite."""
        return self._ls["nonfinite"]

    # ------------------------------------------------------------------ torch's state initialisation
    def _init_call(self, closure) -> bool:
        """True (after creating the state) when ``step(closure=None)`` is torch's initialisation.

        ``torch.distributed.checkpoint.state_dict`` sets every gradient to zero and calls
        ``step(closure=None)`` to create the optimizer's state.  Such a call creates the
        per-parameter buffers (:meth:`_init_state`) and changes no parameter and no counter.  A
        call without closure in any other situation (a gradient that is not zero, or no gradient at
        all) is left to the closure check, which raises a clear :class:`~autostep.ClosureError`.
        """
        if closure is not None:
            return False
        grads = [p.grad for p in self._all_params() if p.grad is not None]
        if not grads:
            return False
        with torch.no_grad():
            for g in grads:
                g = local(g)
                if g.is_sparse:
                    g = g.coalesce().values()
                if bool(g.any()):
                    return False
        self._init_state()
        return True

    def _init_state(self) -> None:
        """Create the per-parameter buffers a trained optimizer has (overridden where there are any)."""

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

    @property
    def forwards(self) -> int:
        """Forward passes (closure calls) since construction."""
        return self._ls["forwards"]

    @property
    def backwards(self) -> int:
        """Backward passes since construction."""
        return self._ls["backwards"]

    @property
    def trials(self) -> int:
        """Trial evaluations (forwards under no_grad at moved parameters) since construction."""
        return self._ls["trials"]

    @property
    def steps(self) -> int:
        """Completed ``step`` calls."""
        return self._ls["step"]
