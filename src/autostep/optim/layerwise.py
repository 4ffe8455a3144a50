"""PLASLS: per-layer Armijo step sizes along the Adam direction."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _validate as V
from ._adam_direction import AdamArmijo
from ._armijo import Segment
from ._docs import ARMIJO_DOC

__all__ = ["PLASLS", "LayerSegment"]


@dataclass
class LayerSegment(Segment):
    """One layer of a param group, with its own step size ``group["layer_lrs"][layer]``."""

    name: str = ""
    layer: int = 0  # index into group["layer_lrs"] (and group["layers"], group["layer_names"])

    @property
    def eta(self) -> float:
        """The layer's own step size (before any scheduler cap)."""
        return self.group["layer_lrs"][self.layer]

    @eta.setter
    def eta(self, value: float) -> None:
        self.group["layer_lrs"][self.layer] = value


class PLASLS(AdamArmijo):
    __doc__ = """Per-layer Armijo line search (PLASLS, the slides' "Adapt learning rates per layer").

    Every layer ``l`` has its own step size ``eta^(l)`` and its own Armijo condition

        f(w - sum_l eta^(l) d_l) <= f(w) - c * eta^(l) * ||g^(l)||^2_precond   for every l,

    checked, as the slides describe, with **one shared trial forward** in which all layers move at
    once (the exact per-layer test ``f(w - eta^(l) d_l)`` with only layer ``l`` moved would need one
    forward per layer; the slides call the shared test "not quite correct, but" affordable).  Layers
    whose condition fails shrink their step size by ``backtrack`` and the shared point is tested
    again; layers that pass keep theirs.  Directions are Adam's as in :class:`AdamSLS`: search with
    beta1 = 0 and the preconditioned gradient norm per layer, update with momentum.

    What a layer is
        * several param groups: each **param group** is one layer;
        * one param group: each **module's own parameters** (``weight`` and ``bias`` of a
          ``Linear`` together).  Modules are found by name when you pass
          ``model.named_parameters()``, otherwise from the modules that run during the first
          step's forward; a parameter used by no module's forward is a layer of its own.
        The partition is fixed at the first step and saved in the state dict; the names are in
        :attr:`layer_step_sizes`.

    ``param_groups[i]["lr"]`` holds the geometric mean of the step sizes applied to the group's
    layers; a value written there (scheduler) caps that mean, every layer scaled alike (see "Step
    size and schedulers").

    Parameters
        lr (0.1): initial step size of every layer.  c (0.1): as :class:`AdamSLS` (the slides reuse
            the Armijo constant of Adam + SLS).
        backtrack (0.9), growth_steps (500), reset, reset_every, min_lr, max_trials: as :class:`SLS`.
        max_lr (1.0), betas ((0.9, 0.999)), eps (1e-8), memory ("fast"): as :class:`AdamSLS`.
    """ + ARMIJO_DOC

    _per_segment = True

    def _group_added(self, group: dict) -> None:
        super()._group_added(group)
        # the partition is fixed at the first step; the keys exist from the start so that a fresh
        # optimizer's state dict has the same structure as a trained one's (torch's distributed
        # checkpoints load only the keys the target already has)
        for key in ("layers", "layer_names", "layer_lrs"):
            group.setdefault(key, None)

    def _validate_loaded_group(self, index: int, group: dict) -> None:
        """The layers of a loaded group and their step sizes."""
        super()._validate_loaded_group(index, group)
        layers, lrs = group.get("layers"), group.get("layer_lrs")
        if layers is None and lrs is None:
            return
        n = len(group["params"])
        if not isinstance(layers, list) or not isinstance(lrs, list) or len(layers) != len(lrs):
            raise ValueError(f"param group {index}: 'layers' and 'layer_lrs' must be lists of the "
                             f"same length, got {layers!r} and {lrs!r}")
        flat = sorted(i for idx in layers for i in idx)
        if flat != list(range(n)):
            raise ValueError(f"param group {index}: 'layers' must split the group's {n} parameters "
                             f"into layers, got {layers!r}")
        for j, e in enumerate(lrs):
            V.positive(f"param group {index} layer_lrs[{j}]", e)

    # ------------------------------------------------------------------ layers
    def _partition(self, group: dict, modules: list) -> tuple[list, list]:
        params = group["params"]
        names = group.get("param_names")
        layers: dict[str, list[int]] = {}
        if names:
            for i, n in enumerate(names):
                layers.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(i)
            return list(layers.values()), list(layers.keys())
        index = {id(p): i for i, p in enumerate(params)}
        taken: set[int] = set()
        out, out_names = [], []
        for m in modules:
            idx = [index[id(p)] for p in m._parameters.values()
                   if p is not None and id(p) in index and index[id(p)] not in taken]
            if idx:
                taken.update(idx)
                out.append(idx)
                out_names.append(f"{len(out) - 1}:{type(m).__name__}")
        for i in range(len(params)):
            if i not in taken:
                out.append([i])
                out_names.append(f"{len(out) - 1}:param{i}")
        return out, out_names

    def _segments(self, ev) -> list[LayerSegment]:
        segs = []
        for gi, group in enumerate(self.param_groups):
            if group.get("layers") is None:
                if len(self.param_groups) > 1:
                    layers, names = [list(range(len(group["params"])))], [group.get("name", f"group{gi}")]
                else:
                    layers, names = self._partition(group, ev.modules_seen())
                group["layers"], group["layer_names"] = layers, names
                group["layer_lrs"] = [group["step_size"]] * len(layers)
            for li, idx in enumerate(group["layers"]):
                ps = [group["params"][i] for i in idx if group["params"][i].grad is not None]
                segs.append(LayerSegment(group, ps, [p.grad for p in ps], group["layer_names"][li], li))
        if self.reducer.sharded:
            # a rank may hold no gradient of a layer (FSDP1 use_orig_params): every rank keeps every
            # layer, so that all reduce the same list of sums (an empty layer contributes 0)
            return segs
        return [sg for sg in segs if sg.params]

    def _finish_groups(self) -> None:
        for group in self.param_groups:
            lrs = group.get("layer_lrs")
            if lrs:
                gm = math.exp(sum(math.log(max(e, 1e-300)) for e in lrs) / len(lrs))
                group["step_size"] = gm

    @property
    def layer_step_sizes(self) -> dict:
        """``{layer name: step size}`` over all groups (empty before the first step)."""
        out = {}
        for group in self.param_groups:
            for n, e in zip(group.get("layer_names") or [], group.get("layer_lrs") or []):
                out[n] = e
        return out
