"""Rollback snapshots: the model's parameters and buffers plus the wrapped optimizer's state,
kept in memory or written to disk at every learning-rate change, restored if the change is undone.

A snapshot is a plain dict (it travels in AutoLR's state dict): ``{"bytes": n, "tensors": [...],
"optimizer": {...}}`` in memory, or ``{"bytes": n, "path": file}`` on disk.
"""

from __future__ import annotations

import copy
import os
import tempfile
import uuid
from typing import Optional

import torch
from torch import nn

from .direction import clone_state

__all__ = ["snapshot_tensors", "take_snapshot", "restore_snapshot", "drop_snapshot"]


def snapshot_tensors(model: nn.Module, params: list) -> list:
    """The tensors a snapshot holds: the model's parameters and buffers, then any optimized
    parameter outside the model, each once, in a fixed order."""
    seen, out = set(), []
    for t in list(model.parameters()) + list(model.buffers()) + params:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


@torch.no_grad()
def take_snapshot(tensors: list, optimizer: torch.optim.Optimizer, where: str,
                  folder: Optional[str]) -> tuple[dict, Optional[str]]:
    """Copy ``tensors`` and the optimizer's state dict; ``where`` is ``"memory"`` or ``"disk"``.

    Returns the snapshot and the folder used for disk snapshots (a fresh temporary folder when
    ``folder`` is None).
    """
    copies = [t.detach().clone() for t in tensors]
    sd = optimizer.state_dict()
    opt_sd = {"state": {k: {n: clone_state(v) for n, v in st.items()}
                        for k, st in sd["state"].items()},
              "param_groups": copy.deepcopy(sd["param_groups"])}
    nbytes = sum(t.numel() * t.element_size() for t in copies)
    nbytes += sum(v.numel() * v.element_size() for st in opt_sd["state"].values()
                  for v in st.values() if isinstance(v, torch.Tensor))
    snap = {"bytes": nbytes}
    if where == "disk":
        folder = folder or tempfile.mkdtemp(prefix="autolr-")
        path = os.path.join(folder, f"autolr-{uuid.uuid4().hex}.pt")
        torch.save({"tensors": copies, "optimizer": opt_sd}, path)
        snap["path"] = path
    else:
        snap["tensors"], snap["optimizer"] = copies, opt_sd
    return snap, folder


@torch.no_grad()
def restore_snapshot(snap: dict, tensors: list, optimizer: torch.optim.Optimizer) -> None:
    """Write the snapshot back into ``tensors`` and the optimizer (a disk snapshot's file is
    deleted once read)."""
    if "path" in snap:
        data = torch.load(snap["path"], weights_only=True)
        os.remove(snap["path"])
    else:
        data = snap
    for t, saved in zip(tensors, data["tensors"]):
        t.copy_(saved)
    optimizer.load_state_dict(data["optimizer"])


def drop_snapshot(snap: Optional[dict]) -> None:
    """Forget a snapshot that is no longer needed (deletes its file)."""
    if snap and "path" in snap and os.path.exists(snap["path"]):
        os.remove(snap["path"])
