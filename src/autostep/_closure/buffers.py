"""Module buffers (BatchNorm running statistics and the like) saved before trial forwards and put
back after them, so that trials never change the model.

* :class:`ModelBuffers` -- the buffers of the model(s) that own the optimized parameters, found
  once per optimizer during its first evaluation (:func:`model_buffers` caches it on the optimizer);
  no hook stays registered, and modules of other models or threads are never touched.
* :class:`BufferGuard` -- the per-call variant: saves the buffers of every module that runs a
  forward *in the calling thread* while it watches (used by the LR search and the line plots).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from .._grad_mode import no_grad

__all__ = ["BufferGuard", "ModelBuffers", "model_buffers", "restore_items"]


def restore_items(items) -> None:
    for module, name, orig, saved in items:
        if module._buffers.get(name) is not orig:
            module._buffers[name] = orig
        orig.copy_(saved)


class BufferGuard:
    """Remember module buffers as modules run, and put them back on :meth:`restore`.

    While :meth:`watch` is active, a global forward pre-hook records, the first time each module runs
    in the thread that entered :meth:`watch`, a copy of its buffers (modules running in other threads
    are ignored).  :meth:`restore` writes the copies back into every recorded buffer (in place, so
    references held elsewhere stay valid; a buffer the forward replaced by a new tensor is put back
    too).
    """

    def __init__(self) -> None:
        self._saved: dict[int, tuple] = {}
        self._thread: int | None = None

    def _hook(self, module: torch.nn.Module, args) -> None:
        if threading.get_ident() != self._thread or torch.compiler.is_compiling():
            return
        key = id(module)
        if key in self._saved:
            return
        items = [
            (name, buf, buf.detach().clone())
            for name, buf in module._buffers.items()
            if buf is not None
        ]
        self._saved[key] = (module, items)

    @contextmanager
    def watch(self) -> Iterator["BufferGuard"]:
        self._thread = threading.get_ident()
        handle = register_module_forward_pre_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    @no_grad
    def restore(self) -> None:
        # Always copy: kernels such as batch_norm update running statistics in place without
        # bumping the tensor's version counter, so "unchanged" cannot be detected cheaply.
        for module, items in self._saved.values():
            for name, orig, saved in items:
                if module._buffers.get(name) is not orig:
                    module._buffers[name] = orig
                orig.copy_(saved)

    def clear(self) -> None:
        self._saved.clear()

    def modules(self) -> list:
        """Modules that ran while watched, in the order they first ran."""
        return [module for module, _ in self._saved.values()]


class ModelBuffers:
    """The buffers of the models that own ``params``, saved and put back around trial forwards.

    The models are found during the first evaluation that runs under :meth:`first_eval`: a forward
    pre-hook, registered for that one call only, notes the modules that run in the calling thread;
    afterwards the outermost of them that hold one of ``params`` are kept (as weak references) as
    the *roots*.  From then on no hook is involved: :meth:`save` copies every buffer of the roots'
    module trees and :meth:`restore` writes the copies back (in place; a buffer replaced by a new
    tensor is put back).  Modules outside those trees -- another model, a model in another thread --
    are never touched.  Parameters held by no module (plain tensors) need nothing.

    With ``torch.compile(model)`` the hook does nothing inside the compiled region (so no graph
    records it); the compiled wrapper itself runs eagerly and is found as the root.
    """

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.key = tuple(id(p) for p in params)
        self._ids = frozenset(self.key)
        self._roots: list | None = None  # weakrefs, None until discovered
        self._order: list = []  # weakrefs of the modules in the order they first ran
        self._items: list = []  # (module, name, buffer, saved copy)

    @property
    def discovered(self) -> bool:
        return self._roots is not None

    def roots(self) -> list:
        return [m for m in (r() for r in self._roots or []) if m is not None]

    def modules(self) -> list:
        """Modules of the models, those seen running first (in that order), then the rest."""
        out, seen = [], set()
        for m in [r() for r in self._order] + _walk(self.roots()):
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                out.append(m)
        return out

    def _finalize(self, ran: list) -> None:
        roots, covered = [], set()
        for m in ran:  # pre-hooks fire parent first: the first unseen module is an outermost one
            if id(m) in covered:
                continue
            tree = list(m.modules())
            if any(id(p) in self._ids for x in tree for p in x._parameters.values() if p is not None):
                roots.append(m)
                covered.update(id(x) for x in tree)
        self._roots = [weakref.ref(m) for m in roots]
        self._order = [weakref.ref(m) for m in ran if id(m) in covered]

    def first_eval(self):
        """Save the buffers (finding the models on the first call) around a first evaluation
        (a context manager)."""
        if self._roots is not None:
            self.save()
            return nullcontext(self)  # (no generator context on every step once discovered)
        return self._discover()

    @contextmanager
    def _discover(self) -> Iterator["ModelBuffers"]:
        """:meth:`first_eval` of the first evaluation: the models are found while it runs."""
        thread = threading.get_ident()
        ran: list = []
        seen: set = set()
        items: list = []

        def hook(module, args):
            if torch.compiler.is_compiling() or threading.get_ident() != thread:
                return
            if id(module) in seen:
                return
            seen.add(id(module))
            ran.append(module)
            compiled = hasattr(module, "_orig_mod")
            for x in module.modules() if compiled else (module,):
                for name, buf in x._buffers.items():
                    if buf is not None:
                        items.append((x, name, buf, buf.detach().clone()))
            if compiled:
                # torch.compile(model): its wrapper runs eagerly and holds the whole model; the
                # hook goes away before the compiled forward is traced, so no graph sees it (a
                # graph traced with a global hook is recompiled once the hook is gone)
                handle[0].remove()

        self._items = items
        handle = [register_module_forward_pre_hook(hook)]
        try:
            with warnings.catch_warnings():
                # torch.compile(model) warns once about global hooks; ours is gone before the
                # compiled forward runs (see above)
                warnings.filterwarnings("ignore", message=r".*torch\.compile\(module\)` when there are "
                                        r"global hooks")
                yield self
        finally:
            handle[0].remove()
        self._finalize(ran)

    @no_grad
    def save(self) -> None:
        """Copy every buffer of the models (reusing the copies of the previous call)."""
        old = {id(b): s for _, _, b, s in self._items}
        items = []
        # every step: walked afresh (a buffer or submodule added or replaced between steps is
        # seen), without the order of modules(), which only per-module grouping needs
        for m in _walk(self.roots()):
            if not m._buffers:
                continue
            for name, buf in m._buffers.items():
                if buf is None:
                    continue
                s = old.get(id(buf))
                if s is not None and s.shape == buf.shape and s.dtype == buf.dtype:
                    s.copy_(buf)
                else:
                    s = buf.detach().clone()
                items.append((m, name, buf, s))
        self._items = items

    @no_grad
    def restore(self) -> None:
        """Write the saved copies back (a no-op before :meth:`save`)."""
        restore_items(self._items)


def _walk(roots: list) -> list:
    """Every module of the trees under ``roots``, each once, in ``Module.modules()`` order.

    The same modules as ``[x for r in roots for x in r.modules()]`` (deduplicated), walked over the
    ``_modules`` dicts directly: no generator per module and no name prefixes, a few times faster
    (it runs twice per step)."""
    out: list = []
    seen: set = set()
    stack = list(reversed(roots))
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        out.append(m)
        children = m._modules
        if children:
            stack.extend(c for c in reversed(children.values()) if c is not None)
    return out


def model_buffers(owner, params: Sequence[torch.Tensor]) -> ModelBuffers:
    """The :class:`ModelBuffers` of ``params`` cached on ``owner`` (found again if they change)."""
    mb = getattr(owner, "_autostep_model_buffers", None)
    if mb is None or mb.key != tuple(id(p) for p in params):
        mb = ModelBuffers(params)
        try:
            owner._autostep_model_buffers = mb
        except AttributeError:  # pragma: no cover - owner with __slots__
            pass
    return mb
