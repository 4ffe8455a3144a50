"""Saving, loading and creating an autostep optimizer's state (the :class:`CheckpointMixin` of
:class:`~autostep.optim._optimizer.AutostepOptimizer`).

* pickling (``copy.deepcopy``, ``torch.save`` of the optimizer) drops the references to the model
  and the current batch;
* :meth:`~CheckpointMixin.state_dict` returns torch's ``state`` and ``param_groups`` only, the
  optimizer-level state being in the first group (see :mod:`autostep.optim._state`);
* :meth:`~CheckpointMixin.load_state_dict` validates what it loads (optimizer class, keys,
  hyper-parameters, tensor shapes) before changing anything;
* torch's state initialisation: ``torch.distributed.checkpoint.state_dict`` creates an optimizer's
  state by setting every gradient to zero and calling ``step(closure=None)``;
  :meth:`~CheckpointMixin._init_call` recognises that call: it creates the per-parameter buffers a
  trained optimizer has (zero moments, zero direction buffers) and changes nothing else -- no
  counter, no parameter.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..distributed import Reducer, local
from .. import _validate as V
from ._state import OPTIONAL_LS, STATE_KEY, StepUndo

__all__ = ["CheckpointMixin"]


class CheckpointMixin:
    """``state_dict``/``load_state_dict`` with validation, pickling, and torch's state creation."""

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
        stays as it was.  Checkpoints of older versions still load (:meth:`_upgrade_state_dict`).
        """
        if not isinstance(state_dict, dict):
            self._refuse(f"it needs the dict state_dict() returns, got {type(state_dict).__name__}")
        state_dict = self._upgrade_state_dict(state_dict)
        self._validate_state_dict(state_dict)
        ls = copy.deepcopy(state_dict["param_groups"][0][STATE_KEY])
        ls.setdefault("optimizer", type(self).__name__)
        for key in OPTIONAL_LS:
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

    # ------------------------------------------------------------------ older checkpoints
    #: optimizer-level state keys older versions saved: old name -> new name, or ``None`` for a
    #: key this class no longer keeps (its value carried no information for this class)
    _legacy_ls: dict = {}
    #: hyper-parameters renamed since older versions: old name -> new name
    _legacy_group_keys: dict = {}
    #: hyper-parameters added since older versions (their checkpoints load with the current value)
    _optional_group_keys: tuple = ()

    def _upgrade_state_dict(self, state_dict: dict) -> dict:
        """A state dict of an older version in today's layout (a new dict; the argument is kept):
        the optimizer-level state moves from the top-level ``"autostep"`` key into
        ``param_groups[0]``, renamed keys (:attr:`_legacy_ls`, :attr:`_legacy_group_keys`) get
        their new names and keys no longer kept are dropped.  Anything malformed is left for the
        validation to name."""
        state_dict = dict(state_dict)
        legacy = state_dict.pop("autostep", None)  # checkpoints that kept it at the top level
        groups = state_dict.get("param_groups")
        if not isinstance(groups, (list, tuple)) or not groups or not isinstance(groups[0], dict):
            return state_dict
        groups = [_renamed(g, self._legacy_group_keys) if isinstance(g, dict) else g
                  for g in groups]
        # hyper-parameters added since (memory=): older checkpoints load with this optimizer's
        groups = [dict(g, **{k: cur[k] for k in self._optional_group_keys if k not in g and k in cur})
                  if isinstance(g, dict) else g
                  for g, cur in zip(groups, list(self.param_groups) + [{}] * len(groups))]
        first = groups[0]
        if legacy is not None and STATE_KEY not in first:
            first = dict(first, **{STATE_KEY: legacy})
        if isinstance(first.get(STATE_KEY), dict):
            first = dict(first, **{STATE_KEY: _renamed(first[STATE_KEY], self._legacy_ls)})
        state_dict["param_groups"] = [first] + groups[1:]
        return state_dict

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
        missing = sorted(set(self._ls) - set(ls) - {"optimizer", *OPTIONAL_LS})
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


def _renamed(d: dict, names: dict) -> dict:
    """``d`` with the keys of ``names`` renamed (to ``None``: dropped); ``d`` itself if none occurs."""
    if not any(old in d for old in names):
        return d
    out = dict(d)
    for old, new in names.items():
        if old in out:
            value = out.pop(old)
            if new is not None:
                out.setdefault(new, value)
    return out
