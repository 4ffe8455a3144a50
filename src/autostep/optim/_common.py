"""Plumbing shared by every autostep optimizer (Armijo family, PAL, LABPAL).

:class:`AutostepOptimizer` keeps the optimizer-level state ``_ls`` (counters, phase, EMAs; anything
that is not per-parameter) beside torch's per-parameter ``state``, saves it under
``state_dict()["autostep"]`` and through pickling/deepcopy, validates every param group when it is
added, enforces the hyper-parameters that must agree across groups, and exposes the pass counters.
"""

from __future__ import annotations

import copy

from torch.optim import Optimizer

from ..distributed import Reducer

__all__ = ["AutostepOptimizer"]


class AutostepOptimizer(Optimizer):
    """Base class: subclasses implement ``_validate_group`` and ``step``."""

    #: hyper-parameters that must have one value in every param group (one search covers them all)
    _shared: tuple = ()

    def __init__(self, params, defaults: dict, ls: dict):
        super().__init__(params, defaults)
        self.reducer = Reducer()
        self._ls = ls
        self.last_step: dict = {}

    # ------------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
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

    def _group_added(self, group: dict) -> None:
        """Hook after a group was added and validated (also after ``load_state_dict``)."""

    # ------------------------------------------------------------------ state
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_ls"] = self._ls
        state["last_step"] = self.last_step
        return state

    def __setstate__(self, state: dict) -> None:
        # torch's load_state_dict also calls __setstate__, with state and param_groups only
        state = dict(state)
        ls = state.pop("_ls", None)
        last = state.pop("last_step", None)
        super().__setstate__(state)
        if ls is not None:
            self._ls = ls
        if last is not None:
            self.last_step = last
        if not hasattr(self, "reducer"):
            self.reducer = Reducer()

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["autostep"] = copy.deepcopy(self._ls)
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        ls = state_dict.pop("autostep", None)
        super().load_state_dict(state_dict)
        if ls is not None:
            self._ls = copy.deepcopy(ls)
        for group in self.param_groups:
            self._group_added(group)

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
