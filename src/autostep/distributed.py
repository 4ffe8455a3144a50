"""The global values of the scalars behind every decision an autostep optimizer takes.

Under ``torch.distributed`` each rank sees part of the problem, in two different ways:

* **data**: every rank evaluates the closure on its own part of the batch, so the *losses* differ
  between ranks; the global loss is their **average over the data-parallel ranks** (DDP, FSDP and
  HSDP all give every rank its own data);
* **parameters**: under FSDP each rank holds a shard of every parameter and of its gradient, so a
  sum over parameters (a squared norm, a dot product ``<g, d>``) computed on one rank is a partial
  sum; the global value is the **sum over the shard group** (HSDP: over the shard dimension of the
  mesh only -- the replicas hold the same numbers).  Under DDP, or on one process, every rank
  already holds the whole sum.

:class:`Reducer` is the one place that decides this.  Parameter sums are computed on the *local*
tensors (:func:`locals_`: a DTensor's local shard; a ``Partial`` DTensor is reduced first, never
read through ``.tolist()``), each tensor's contribution weighted by the size of the group it is
sharded over (:meth:`Reducer.weights`), and then averaged over the ranks together with the losses
(:meth:`Reducer.mean`).  Averaging ``size * local part`` over ``size`` shards (times any number of
replicas) *is* the sum over the shards, so one all-reduce gives the losses their average and the
parameter sums their total; a replicated tensor has weight 1 and its identical copies average to
themselves.  Which groups a tensor is sharded over is read from

* a DTensor's mesh and placements (FSDP2 ``fully_shard``, HSDP meshes, tensor parallel): every mesh
  dimension with a ``Shard`` placement;
* FSDP1 (``FullyShardedDataParallel``) flat parameters and, with ``use_orig_params=True``, the
  original parameters (views into the flat shard): the process group of the FSDP module that owns
  them, learnt from the modules of the model the closure runs (:meth:`Reducer.observe`), else the
  default group; nothing for ``NO_SHARD``.

When ``torch.distributed`` is not initialised (or has one rank) every reduction is a no-op that
costs nothing, and the numbers are bitwise those of the undistributed code.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.distributed as dist

try:  # DTensor exists where torch.distributed does
    from torch.distributed.tensor import DTensor, Replicate
except Exception:  # pragma: no cover - builds without torch.distributed
    DTensor = None  # type: ignore[assignment,misc]
    Replicate = None  # type: ignore[assignment,misc]

__all__ = ["Reducer", "is_distributed", "local", "locals_", "shard_size"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available, initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (an alias: in-place ops on it change the DTensor), else ``t``.

    A DTensor with ``Partial`` placements (pending sums) is first reduced to ``Replicate`` (a
    collective: every rank of its mesh must make the same call)."""
    if DTensor is not None and isinstance(t, DTensor):
        if any(p.is_partial() for p in t.placements):
            t = t.redistribute(t.device_mesh,
                               [Replicate() if p.is_partial() else p for p in t.placements])
        return t.to_local()
    return t


def locals_(ts: Iterable[torch.Tensor]) -> list:
    """:func:`local` of every tensor (a plain list of the same tensors when none is a DTensor).

    Every op the optimizers apply to parameters, moments and directions is pointwise, so on DTensors
    they run shard by shard on the local tensors: fused foreach kernels, and no dependence on
    DTensor sharding rules (``_foreach_copy_`` has none)."""
    ts = list(ts)
    if DTensor is not None:
        for t in ts:  # (a loop, not any() over a generator: this runs a dozen times per step)
            if isinstance(t, DTensor):
                return [local(t) for t in ts]
    return ts


def _groups(t: torch.Tensor, flat_groups: dict | None) -> tuple:
    """The process groups ``t`` is sharded over (``()``: a whole, replicated tensor)."""
    if DTensor is not None and isinstance(t, DTensor):
        mesh = t.device_mesh
        return tuple(mesh.get_group(i) for i, p in enumerate(t.placements) if p.is_shard())
    if getattr(t, "_fsdp_flattened", False):  # FSDP1: flat parameter or use_orig_params view
        if flat_groups is not None and id(t) in flat_groups:
            g = flat_groups[id(t)]
            return () if g is None else (g,)
        return (dist.group.WORLD,) if is_distributed() else ()
    return ()


def shard_size(t: torch.Tensor, flat_groups: dict | None = None) -> int:
    """Number of shards ``t`` is split into (1 for a whole tensor)."""
    n = 1
    for g in _groups(t, flat_groups):
        n *= dist.get_world_size(g)
    return n


class Reducer:
    """Global values of the scalars that feed an optimizer's decisions.

    Parameters
    ----------
    group:
        Process group of the data-parallel ranks (whose losses are averaged); ``None`` means the
        default (world) group.

    ``mean(values, device)`` returns the rank-average of ``values`` as Python floats, computed in
    float64 (on the device of the loss for NCCL), so the numbers are identical on every rank.
    Parameter sums enter it as local sums weighted by :meth:`weights`, and come out summed over
    their shards.
    """

    def __init__(self, group=None):
        self.group = group
        #: id(parameter) -> shard process group (None: not sharded) of FSDP1 parameters
        self.flat_groups: dict = {}
        #: whether any parameter of the optimizer is sharded (set by :meth:`observe`; the same on
        #: every rank)
        self.sharded = False
        self._fsdp1: list = []  # (FSDP1 module, its handle) of every sharded FSDP1 module seen
        self._seen: set = set()

    @property
    def active(self) -> bool:
        return is_distributed()

    def mean(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """Average ``values`` over the data-parallel ranks (identity when not distributed)."""
        values = [float(v) for v in values]
        if not self.active:
            return values
        if dist.get_backend(self.group) == "nccl" and torch.device(device).type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        t /= dist.get_world_size(self.group)
        return t.tolist()

    # ------------------------------------------------------------------ sums over parameters
    def weights(self, params: Sequence[torch.Tensor]) -> list[float] | None:
        """Per parameter, the factor its local contribution to a parameter sum is multiplied by
        before :meth:`mean`: the number of shards it is split into.  ``None`` when every factor is 1
        (nothing sharded: the sums are used as they are)."""
        if not self.sharded:
            return None
        w = [float(shard_size(p, self.flat_groups)) for p in params]
        return None if all(x == 1.0 for x in w) else w

    def global_sums(self, local_sums: Sequence[float]) -> list[float]:
        """Parameter sums from weighted local sums: averaged over the ranks when anything is sharded
        (which makes them global sums), as they are otherwise (every rank holds the whole sum)."""
        if not (self.sharded and self.active):
            return [float(v) for v in local_sums]
        return self.mean(local_sums)

    def any_nonzero(self, xs: Sequence[torch.Tensor]) -> bool:
        """True if any element of any tensor in ``xs`` is non-zero on any rank's shard."""
        flag = float(any(bool(x.ne(0).any()) for x in locals_(xs)))
        return self.global_sums([flag])[0] > 0

    # ------------------------------------------------------------------ FSDP1
    def observe(self, modules: Iterable[torch.nn.Module], params: Sequence[torch.Tensor]) -> None:
        """Learn the shard groups of FSDP1 parameters from the model's modules, and whether any of
        the optimizer's ``params`` is sharded (decided from all of them, not only those with a
        gradient, so every rank agrees)."""
        if not self.active:
            self.sharded = False
            return
        for m in modules:
            handle = getattr(m, "_handle", None)
            flat = getattr(handle, "flat_param", None)
            if flat is None or id(flat) in self._seen:
                continue
            self._seen.add(id(flat))
            group = handle.process_group if handle.uses_sharded_strategy else None
            for p in [flat] + list(getattr(flat, "_params", None) or []) + list(
                    getattr(flat, "_shared_params", None) or []):
                self.flat_groups[id(p)] = group
            if group is not None:
                self._fsdp1.append((m, handle))
        self.sharded = any(_groups(p, self.flat_groups) != () for p in params)

    def release_unsharded(self) -> None:
        """Free FSDP1's gathered parameters after a forward under ``no_grad``.

        FSDP1 keeps the root module's (under ``SHARD_GRAD_OP`` every module's) gathered parameters
        after a forward, expecting a backward, and its next forward reuses them instead of gathering
        the shards again.  A trial moves the shards between forwards, so without this the next
        forward would evaluate the stale point.
        """
        if not self._fsdp1:
            return
        from torch.distributed.fsdp._runtime_utils import _reshard

        for module, handle in self._fsdp1:
            _reshard(module, handle, True)
