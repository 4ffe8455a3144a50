"""Rank-averaging of the scalars that feed an optimizer's decisions.

Under ``torch.distributed`` every rank evaluates the closure on its own shard of the batch, so the
losses it sees differ.  Any decision taken from them (accept a trial, shrink a step size, update a
smoothed average) must be taken from the *same* numbers on every rank, or the ranks diverge and make
different numbers of forward calls (which deadlocks DDP).  :class:`Reducer` averages a list of floats
over all ranks with a single ``all_reduce``; when ``torch.distributed`` is not initialised (or the
world has one rank) it is a no-op that costs nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

__all__ = ["Reducer", "is_distributed", "local"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available, initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Reducer:
    """Average scalars over ranks.

    Parameters
    ----------
    group:
        Optional process group; ``None`` means the default (world) group.

    ``mean(values, device)`` returns the rank-average of ``values`` as a list of Python floats.  The
    all-reduce runs in float64 on ``device`` (use the device of the loss: CPU for gloo, CUDA for
    NCCL), so the averaged numbers are identical on every rank.
    """

    def __init__(self, group=None):
        self.group = group

    @property
    def active(self) -> bool:
        return is_distributed()

    def mean(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        values = [float(v) for v in values]
        if not self.active:
            return values
        if dist.get_backend(self.group) == "nccl" and torch.device(device).type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        t /= dist.get_world_size(self.group)
        return t.tolist()


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor, the tensor itself otherwise."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t
