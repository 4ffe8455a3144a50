"""The base of PAL and LABPAL (:class:`ParabolicOptimizer`): ``lr`` is a read-out of the step
they compute, so a value written into it from outside (an LR scheduler) is reported; a
``momentum`` written between steps is used, and reported too; :attr:`update_length` reads the
length of the last update along the unit direction (the Armijo family's ``step_size`` is a
learning rate, a different quantity)."""

from __future__ import annotations

import warnings

from .._stack import outside_level
from ._optimizer import AutostepOptimizer

__all__ = ["ParabolicOptimizer"]


class ParabolicOptimizer(AutostepOptimizer):
    """Shared plumbing of PAL and LABPAL on top of :class:`AutostepOptimizer`."""

    def _with_grad(self) -> list[list]:
        return [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]

    def add_param_group(self, param_group: dict) -> None:
        """As torch's; an ``lr`` other than 0 is reported: it is a read-out here, shown until the
        first step and never used (``PAL(params, 0.1)`` does not set a learning rate)."""
        lr = param_group.get("lr", self.defaults.get("lr")) if isinstance(param_group, dict) else None
        if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0:
            self._warn_once("lr given", (
                f"{type(self).__name__}: lr={lr!r} has no effect: {type(self).__name__} computes "
                "its own step size and param_groups[...]['lr'] is a read-out of it (the value "
                "given is shown until the first step). Leave lr out."))
        super().add_param_group(param_group)

    def _group_added(self, group: dict) -> None:
        # what the optimizer last wrote / was given, to tell writes from outside (schedulers)
        group.setdefault("applied_lr", group["lr"])
        group.setdefault("applied_momentum", group["momentum"])

    def _warn_external_writes(self) -> None:
        """Warn (once per optimizer and key) when a scheduler or the user wrote ``lr`` or
        ``momentum`` between steps: ``lr`` is a read-out here and the write has no effect;
        a ``momentum`` write (``OneCycleLR(cycle_momentum=True)``) is used, but rarely meant."""
        name = type(self).__name__
        for group in self.param_groups:
            if group["lr"] != group["applied_lr"]:
                self._warn_once("lr", (
                    f"{name}: param_groups[...]['lr'] was set to {group['lr']!r} from outside (an LR "
                    f"scheduler?). {name} computes its own step size; lr is a read-out of it and the "
                    "written value is ignored. Remove the scheduler (or use an Armijo-family "
                    "optimizer, where a scheduler caps the step size)."))
            if group["momentum"] != group["applied_momentum"]:
                self._warn_once("momentum", (
                    f"{name}: param_groups[...]['momentum'] was changed from "
                    f"{group['applied_momentum']!r} to {group['momentum']!r} between steps "
                    "(OneCycleLR with cycle_momentum=True does this); the new value is used. Pass "
                    "cycle_momentum=False if that is not what you want."))
            group["applied_momentum"] = group["momentum"]

    def _warn_once(self, key: str, message: str) -> None:
        """A ``RuntimeWarning`` the first time ``key`` comes up for this optimizer."""
        if not self._warned.get(key):
            self._warned[key] = True
            warnings.warn(message, RuntimeWarning, stacklevel=outside_level())

    def _note_written_lr(self) -> None:
        for group in self.param_groups:
            group["applied_lr"] = group["lr"]

    @property
    def _warned(self) -> dict:
        w = self.__dict__.get("_external_warned")
        if w is None:
            w = self.__dict__["_external_warned"] = {}
        return w

    @property
    def update_length(self) -> float:
        """Length of the last update along the unit direction, 0 before the first (PAL: ``s_upd``;
        LABPAL ``"nsgd"``: the reused step; ``"sgd"``: the estimated ``alpha * s_min``)."""
        return self._ls["update_length"]

    @property
    def step_size(self) -> float:
        """Deprecated name of :attr:`update_length` (in the Armijo family ``step_size`` is the
        learning rate, ``param_groups[0]["lr"]``)."""
        warnings.warn(f"{type(self).__name__}.step_size is now called update_length; the old name "
                      "will be removed", DeprecationWarning, stacklevel=2)
        return self.update_length
