"""autostep's one snapshot mechanism: the random generators and a model's tensors, put back bit for bit.

* :class:`RNGSnapshot` -- the CPU and CUDA generator states, captured and restored, so that every
  re-evaluation sees the same dropout masks.  Python's ``random`` and numpy are never touched, and
  nothing is ever reseeded from the clock.  Used by the closure evaluator, the LR search, AutoLR and
  the loss-along-lines diagnostic.
* :class:`ModelState` -- a model's parameters and buffers (and its gradients and train/eval flags),
  written back in place.  The LR search resets every trial with it, the range test and the
  loss-along-lines diagnostic put the model back with it.
* :class:`OptimizerState` -- an optimizer's per-parameter state and param-group values, copied and
  put back in place (AutoLR's direction probe steps the wrapped optimizer and undoes it).
* :func:`take_snapshot` / :func:`restore_snapshot` / :func:`drop_snapshot` -- the same tensors
  (:func:`model_tensors`) plus an optimizer's state, as a plain dict kept in memory or written to
  disk, for AutoLR's rollbacks (the dict travels in AutoLR's state dict).

The optimizers' per-step buffer guard (``autostep._closure.buffers``: :class:`ModelBuffers`,
:class:`BufferGuard`) is on the hot path of every line-search trial and finds the buffers to save
while the forward runs; it stays there.
"""

from __future__ import annotations

import copy
import os
import tempfile
import uuid
from typing import Any, Iterable, Optional

import torch
from torch import nn

__all__ = ["RNGSnapshot", "ModelState", "OptimizerState", "model_tensors", "clone_value",
           "take_snapshot", "restore_snapshot", "drop_snapshot"]


class RNGSnapshot:
    """States of the CPU generator and, when CUDA is initialised, of every CUDA generator."""

    __slots__ = ("cpu", "cuda")

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


class ModelState:
    """Parameters, buffers, gradients and train/eval flags of a model, restorable bit for bit.

    Values are written back in place into the original tensor objects (and an object replaced
    since the snapshot is put back), so references held elsewhere -- e.g. by the user's optimizer
    -- stay valid.  Buffers are copied back unconditionally: BatchNorm updates its statistics
    without bumping the version counter.
    """

    def __init__(self, model: nn.Module) -> None:
        self.entries = []   # (store, name, tensor, copy, is a parameter)
        for module in model.modules():
            for store, is_param in ((module._parameters, True), (module._buffers, False)):
                for name, t in store.items():
                    if t is not None:
                        self.entries.append((store, name, t, t.detach().clone(), is_param))
        self.grads = [(p, p.grad) for p in model.parameters()]
        self.modes = [(m, m.training) for m in model.modules()]

    @torch.no_grad()
    def restore(self, grads: bool = False, params: bool = True) -> None:
        """Write the saved values back, and the modes; the gradient objects too when ``grads``;
        only the buffers when ``params`` is False."""
        for store, name, t, saved, is_param in self.entries:
            if is_param and not params:
                continue
            if store.get(name) is not t:
                store[name] = t
            t.copy_(saved)
        for m, training in self.modes:
            m.training = training
        if grads:
            for p, g in self.grads:
                p.grad = g


def model_tensors(model: nn.Module, extra: Iterable[torch.Tensor] = ()) -> list:
    """The model's parameters and buffers, then any tensor of ``extra`` outside the model (e.g. an
    optimized parameter), each once, in a fixed order."""
    seen, out = set(), []
    for t in list(model.parameters()) + list(model.buffers()) + list(extra):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def clone_value(value: Any) -> Any:
    """A detached copy of a tensor, a deep copy of anything else (optimizer state values)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


class OptimizerState:
    """An optimizer's ``state`` and param-group values (all but ``params``), copied now and put
    back by :meth:`restore`: the copies become the live state (entries added since are dropped),
    tensor group values are written back in place."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.state = {p: {k: clone_value(v) for k, v in st.items()}
                      for p, st in optimizer.state.items()}
        self.groups = [{k: clone_value(v) for k, v in g.items() if k != "params"}
                       for g in optimizer.param_groups]

    @torch.no_grad()
    def restore(self) -> None:
        state = self.optimizer.state
        for p in list(state.keys()):
            if p not in self.state:
                del state[p]
        for p, st in self.state.items():
            cur = state[p]
            cur.clear()
            cur.update(st)
        for g, sg in zip(self.optimizer.param_groups, self.groups):
            for k, v in sg.items():
                if isinstance(g.get(k), torch.Tensor) and isinstance(v, torch.Tensor):
                    g[k].copy_(v)
                else:
                    g[k] = v


@torch.no_grad()
def take_snapshot(tensors: list, optimizer: torch.optim.Optimizer, where: str,
                  folder: Optional[str]) -> tuple[dict, Optional[str]]:
    """Copy ``tensors`` and the optimizer's state dict; ``where`` is ``"memory"`` or ``"disk"``.

    The snapshot is a plain dict: ``{"bytes": n, "tensors": [...], "optimizer": {...}}`` in
    memory, or ``{"bytes": n, "path": file}`` on disk.  Returns it and the folder used for disk
    snapshots (a fresh temporary folder when ``folder`` is None).
    """
    copies = [t.detach().clone() for t in tensors]
    sd = optimizer.state_dict()
    opt_sd = {"state": {k: {n: clone_value(v) for n, v in st.items()}
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
