"""How AutoLR's rate reaches the wrapped optimizer: group ratios, a scheduler's multiplier, and
the refusal of rates written behind AutoLR's back.

* AutoLR's own rate ``eta`` is group 0's; group ``g`` runs at ``eta * ratio_g`` (its ratio to group
  0 when AutoLR was built).
* AutoLR's own ``param_groups`` carry an ``lr`` that a learning-rate scheduler (or the user) may
  write.  It starts at the wrapped group's seed rate, and the applied rate is multiplied by
  ``lr / seed`` (1.0 until something writes it): a ``LambdaLR(autolr, f)`` scales AutoLR's rate by
  ``f(t)``; a scheduler never restarts or overrides AutoLR's decisions.
* The wrapped optimizer's ``group["lr"]`` is written only by AutoLR.  A different value found there
  at the next step (a scheduler attached to the wrapped optimizer, a direct write) is refused with
  :class:`ForeignRateError` before anything changes.
"""

from __future__ import annotations

import torch

__all__ = ["ForeignRateError", "Rates"]


class ForeignRateError(RuntimeError):
    """The wrapped optimizer's learning rate was changed outside AutoLR."""


def _write(group: dict, value: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


class Rates:
    """AutoLR's rate, the group ratios and seeds, and what was last written to the wrapped groups.

    Parameters
    ----------
    lrs:
        The wrapped groups' rates when AutoLR starts (group 0's is the seed rate ``eta``).
    """

    def __init__(self, lrs: list) -> None:
        self.eta = lrs[0]
        self.ratios = [v / lrs[0] for v in lrs]
        self.seeds = list(lrs)          # the base of each group's scheduler multiplier
        self.applied = list(lrs)        # what the wrapped groups hold (AutoLR's last write)
        self.used = [1.0] * len(lrs)    # the multipliers in the applied rates

    def add_group(self, lr: float) -> None:
        """A new group running at ``lr`` now (its ratio to the current rate is kept)."""
        self.ratios.append(lr / self.eta)
        self.seeds.append(lr)
        self.applied.append(lr)
        self.used.append(1.0)

    def multiplier(self, own_group: dict, g: int) -> float:
        """The scheduler's factor for group ``g``: its ``lr`` over the seed (1.0 if unwritten)."""
        return float(own_group["lr"]) / self.seeds[g]

    def apply(self, inner_groups: list, own_groups: list) -> None:
        """Write ``eta * ratio_g * multiplier_g`` into every wrapped group."""
        for g, (ig, og) in enumerate(zip(inner_groups, own_groups)):
            v = self.eta * self.ratios[g]
            m = self.multiplier(og, g)
            if m != 1.0:
                v = v * m
            _write(ig, v)
            self.applied[g], self.used[g] = float(ig["lr"]), m

    def refresh(self, inner_groups: list, own_groups: list) -> None:
        """Re-apply when a multiplier changed since the last write (a scheduler stepped)."""
        if any(self.multiplier(og, g) != self.used[g] for g, og in enumerate(own_groups)):
            self.apply(inner_groups, own_groups)

    def restore(self, inner_groups: list) -> None:
        """Write the last applied rates back into the wrapped groups (after a failed step)."""
        for ig, v in zip(inner_groups, self.applied):
            _write(ig, v)

    def write_unit(self, inner_groups: list) -> None:
        """Unit rates (``1.0 * ratio_g``, no multiplier): the direction per unit of ``eta``."""
        for g, ig in enumerate(inner_groups):
            _write(ig, 1.0 * self.ratios[g])

    def check(self, inner_groups: list) -> None:
        """Refuse a rate that AutoLR did not write into a wrapped group."""
        for g, ig in enumerate(inner_groups):
            want, got = self.applied[g], float(ig["lr"])
            if got != want:
                raise ForeignRateError(
                    f"the wrapped optimizer's lr in param group {g} is {got!r}, but AutoLR set it "
                    f"to {want!r}: something else wrote it (a learning-rate scheduler attached to "
                    "the wrapped optimizer, or a direct write).  AutoLR owns that rate.  Attach the "
                    "scheduler to the AutoLR object instead, e.g. LambdaLR(autolr, f), where it "
                    "multiplies AutoLR's rate by f(t); or set autolr.param_groups[g]['lr'] to scale "
                    "it by hand.  Nothing was changed by this step.")

    def resync(self, inner_groups: list) -> None:
        """Take the wrapped groups' rates as they are (after loading a plain optimizer state)."""
        lrs = [float(g["lr"]) for g in inner_groups]
        self.eta = lrs[0]
        self.ratios = [v / lrs[0] for v in lrs]
        self.seeds = list(lrs)
        self.applied = list(lrs)
        self.used = [1.0] * len(lrs)

    def state_dict(self) -> dict:
        return {"eta": self.eta, "ratios": list(self.ratios), "seeds": list(self.seeds),
                "applied": list(self.applied), "used": list(self.used)}

    def load_state_dict(self, sd: dict) -> None:
        self.eta = sd["eta"]
        self.ratios, self.seeds = list(sd["ratios"]), list(sd["seeds"])
        self.applied, self.used = list(sd["applied"]), list(sd["used"])
