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
"""

from __future__ import annotations

import copy
import math

import torch
from torch.optim import Optimizer

from .._closure import ClosureEvaluator, model_buffers
from ..distributed import Reducer, local
from . import _validate as V
from ._adam import sq_norms

__all__ = ["AutostepOptimizer", "STATE_KEY"]

#: key of the optimizer-level state in ``param_groups[0]``
STATE_KEY = "autostep"


class AutostepOptimizer(Optimizer):
    """Base class: subclasses implement ``_validate_group``, ``_init_state`` and ``step``."""

    #: hyper-parameters that must have one value in every param group (one search covers them all)
    _shared: tuple = ()

    def __init__(self, params, defaults: dict, ls: dict):
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
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        self._validate_standard(group)
        first = self.param_groups[0]
        for key in self._shared:
            if group[key] != first[key]:
                raise ValueError(
                    f"{key} must be the same in every param group (one search covers all groups); "
                    f"got {first[key]!r} and {group[key]!r}"
                )
        self._group_added(group)

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
    def _clip_coef(self, grads: list) -> float:
        """``max_grad_norm / ||g||`` when the total gradient norm exceeds ``max_grad_norm``, else 1.

        The norm is taken over every gradient of the step (all groups), as
        ``torch.nn.utils.clip_grad_norm_`` does; a non-finite norm is left to the step's own checks.
        """
        mx = self.param_groups[0].get("max_grad_norm")
        if mx is None or not grads:
            return 1.0
        norm = math.sqrt(float(sq_norms([local(g) for g in grads])))
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
        state.pop("_autostep_model_buffers", None)  # weak references to the model, found again
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
        state_dict = dict(state_dict)
        legacy = state_dict.pop("autostep", None)  # checkpoints that kept it at the top level
        groups = state_dict.get("param_groups")
        if legacy is not None and groups and STATE_KEY not in groups[0]:
            state_dict["param_groups"] = [dict(groups[0], **{STATE_KEY: legacy})] + list(groups[1:])
        current = copy.deepcopy(self._ls)
        super().load_state_dict(state_dict)
        if STATE_KEY not in self.param_groups[0]:
            # a state dict without it (e.g. from another optimizer): keep the counters we had
            self.param_groups[0][STATE_KEY] = current
        for group in self.param_groups[1:]:
            group.pop(STATE_KEY, None)
        for group in self.param_groups:
            self._group_added(group)

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
        found once per optimizer."""
        params = self._all_params()
        return ClosureEvaluator(closure, params, self.reducer,
                                buffers=model_buffers(self, params), grad_scaler=grad_scaler)

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
