"""Evaluating a user closure the way every autostep line search needs it.

This module holds the torch plumbing that is shared by all optimizers (and by the LR search and the
AutoLR wrapper):

* :class:`RNGSnapshot` -- the CPU and CUDA generator states, captured and restored, so that every
  evaluation inside one step sees the same dropout masks.  Python's ``random`` and numpy are never
  touched, and nothing is ever reseeded from the clock.
* :class:`ModelBuffers` -- the buffers of the model(s) that own the optimized parameters (BatchNorm
  running statistics, ``num_batches_tracked``, any buffer a custom module changes in place), saved
  before trial forwards and put back after them, so trials never change the model.  The models are
  found once per optimizer, during its first evaluation; no hook stays registered, and modules
  that do not belong to those models (another model, another thread) are never touched.
* :class:`BufferGuard` -- the older per-call variant: saves the buffers of every module that runs a
  forward *in the calling thread* while it watches (used by the LR search and the line plots).
* :class:`ClosureEvaluator` -- one step's worth of closure calls: the first evaluation with grad
  enabled (and a backward), then any number of trial evaluations under ``torch.no_grad()``, with
  the closure contract checked and forwards/backwards counted.

The two closure conventions
---------------------------
Both are accepted and told apart at the first evaluation of every step:

* **loss-only** (autostep's own): ``closure()`` computes the mini-batch loss and returns it as a
  scalar tensor, without ``backward()``.  The optimizer clears the old gradients, back-propagates
  itself, and runs every trial under ``torch.no_grad()``: a trial costs one forward, no graph.
* **torch-style** (``torch.optim.LBFGS``, Lightning's automatic optimization): the closure calls
  ``zero_grad()`` (or not, to accumulate) and ``backward()`` itself and returns the loss.  The
  gradients it leaves in ``.grad`` -- including gradients accumulated before ``step()`` and any
  clipping the closure applies -- are the step's gradients.  For trials the ``.grad`` fields are set
  aside (so a ``zero_grad()`` in the closure cannot touch them), the closure runs under
  ``torch.no_grad()`` and its ``backward()`` call is **skipped**: autostep wraps
  ``torch.autograd.backward`` once per process with a pass-through that is only active during
  autostep's own trial evaluations, in the thread running them.  A closure that forces grad mode
  back on (Lightning's does) still records an autograd graph in its trial forwards, but the graph is
  never back-propagated; measured with ``benchmarks/closure_styles.py``.

When a torch-style closure adds to gradients that were already there (gradient accumulation), the
Armijo test uses the gradient of the loss the closure returns (the part its own ``backward()``
added), while the direction uses the whole accumulated gradient.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from .distributed import Reducer, local

__all__ = [
    "ClosureError",
    "NonFiniteLossError",
    "RNGSnapshot",
    "BufferGuard",
    "ModelBuffers",
    "ClosureEvaluator",
    "CLOSURE_CONTRACT",
    "unscale_grads",
]

CLOSURE_CONTRACT = (
    "The closure computes the mini-batch loss and returns it as a scalar tensor. Either\n"
    "    def closure():                      # loss-only: trials cost one forward each\n"
    "        return loss_fn(model(x), y)\n"
    "or, as for torch.optim.LBFGS and Lightning,\n"
    "    def closure():                      # torch-style\n"
    "        optimizer.zero_grad()\n"
    "        loss = loss_fn(model(x), y)\n"
    "        loss.backward()\n"
    "        return loss\n"
    "    optimizer.step(closure)"
)


class ClosureError(RuntimeError):
    """The closure broke the closure contract (see :data:`CLOSURE_CONTRACT`)."""


class NonFiniteLossError(FloatingPointError):
    """The loss at the start point of a step is NaN or infinite; the step changed nothing."""


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


# ---------------------------------------------------------------------- backward interception
_TLS = threading.local()
_ORIG_BACKWARD = None
_INSTALL_LOCK = threading.Lock()


class _Recorder:
    """What a closure's own ``backward()`` calls did during one evaluation (thread-local)."""

    def __init__(self, params: Sequence[torch.Tensor], skip: bool) -> None:
        self.params = params
        self.skip = skip
        self.calls = 0
        self.pre: list | None = None  # .grad values just before the closure's first backward
        self.pre_taken = False
        self.diff: list | None = None  # what the closure's backward calls added to .grad

    def backward(self, orig, args, kwargs):
        self.calls += 1
        if self.skip:
            return None
        if not self.pre_taken:
            self.pre_taken = True
            if any(p.grad is not None for p in self.params):
                self.pre = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        out = orig(*args, **kwargs)
        if self.pre is not None:
            self.diff = [
                None if p.grad is None else (p.grad - pr if pr is not None else p.grad.clone())
                for p, pr in zip(self.params, self.pre)
            ]
        return out


def _install_backward_wrapper() -> None:
    """Wrap ``torch.autograd.backward`` once: a pass-through unless this thread is recording."""
    global _ORIG_BACKWARD
    with _INSTALL_LOCK:
        if _ORIG_BACKWARD is not None:
            return
        orig = torch.autograd.backward

        @functools.wraps(orig)
        def backward(*args, **kwargs):
            rec = getattr(_TLS, "rec", None)
            if rec is None:
                return orig(*args, **kwargs)
            _TLS.rec = None  # a backward inside a backward hook is the user's business
            try:
                return rec.backward(orig, args, kwargs)
            finally:
                _TLS.rec = rec

        backward.__autostep_wrapped__ = orig  # type: ignore[attr-defined]
        torch.autograd.backward = backward
        _ORIG_BACKWARD = orig


@contextmanager
def _recording(rec: _Recorder) -> Iterator[_Recorder]:
    prev = getattr(_TLS, "rec", None)
    _TLS.rec = rec
    try:
        yield rec
    finally:
        _TLS.rec = prev


# ---------------------------------------------------------------------- buffers
def _restore_items(items) -> None:
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

    @torch.no_grad()
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
        for m in [r() for r in self._order] + [x for root in self.roots() for x in root.modules()]:
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

    @contextmanager
    def first_eval(self) -> Iterator["ModelBuffers"]:
        """Save the buffers (finding the models on the first call) around a first evaluation."""
        if self._roots is not None:
            self.save()
            yield self
            return
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

    @torch.no_grad()
    def save(self) -> None:
        """Copy every buffer of the models (reusing the copies of the previous call)."""
        old = {id(b): s for _, _, b, s in self._items}
        items = []
        for m in self.modules():
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

    @torch.no_grad()
    def restore(self) -> None:
        """Write the saved copies back (a no-op before :meth:`save`)."""
        _restore_items(self._items)


# ---------------------------------------------------------------------- helpers
def _grad_fingerprint(params: Sequence[torch.Tensor]) -> list:
    """The ``.grad`` objects themselves with their version counters (compared with ``is``)."""
    return [(p.grad, None if p.grad is None else p.grad._version) for p in params]


def _same_grads(a: list, b: list) -> bool:
    return len(a) == len(b) and all(ga is gb and va == vb for (ga, va), (gb, vb) in zip(a, b))


def _replaced(now, before, version) -> bool:
    """True if ``.grad`` is not the tensor it was (``before``, at ``version``): a new gradient.

    A different *object* holding the same values is the same gradient: FSDP1 with
    ``use_orig_params=True`` replaces every ``.grad`` on each forward by a view of its flat
    gradient (a view of the same memory, or of a fresh copy when the flat gradient was rebuilt from
    the ``.grad`` fields), without changing it.  The same memory at the same version is checked
    first; otherwise the values are compared (one pass, only for replaced objects).  A closure's
    own ``backward()`` is recorded separately, so this only has to tell copies from new values."""
    if now is None or now is before:
        return False
    if before is None:
        return True
    a, b = local(now), local(before)
    if a.is_sparse or b.is_sparse or a.layout != torch.strided or b.layout != torch.strided:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return True
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a._version == version:
        return False
    with torch.no_grad():
        return not torch.equal(a, b)


def _check_loss(value, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        hint = ""
        if isinstance(value, (int, float)):
            hint = " It looks like the closure returned loss.item(); return the tensor itself."
        elif value is None:
            hint = " It returned None; add `return loss` at the end of the closure."
        raise ClosureError(
            f"The closure returned {type(value).__name__} {value!r} {where}; it must return the "
            f"loss as a scalar torch.Tensor.{hint}\n{CLOSURE_CONTRACT}"
        )
    if value.numel() != 1:
        raise ClosureError(
            f"The closure returned a tensor of shape {tuple(value.shape)} {where}; it must return "
            "a scalar loss. Reduce it first, e.g. `return loss.mean()`, or use a loss with "
            f"reduction='mean'.\n{CLOSURE_CONTRACT}"
        )
    return value


def unscale_grads(grad_scaler, optimizer) -> bool:
    """``grad_scaler.unscale_(optimizer)`` and whether any gradient is inf/NaN.

    The check is recorded in the scaler, so the usual ``grad_scaler.update()`` after the step adapts
    the scale.  A disabled scaler (or ``None``) unscales nothing and reports no inf.
    """
    if grad_scaler is None or not grad_scaler.is_enabled():
        return False
    grad_scaler.unscale_(optimizer)
    state = grad_scaler._per_optimizer_states[id(optimizer)]
    return any(bool(v.item()) for v in state["found_inf_per_device"].values())


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


# ---------------------------------------------------------------------- the evaluator
class ClosureEvaluator:
    """All closure calls of one optimizer step.

    Usage (inside an optimizer's ``step``)::

        ev = ClosureEvaluator(closure, params, reducer, buffers=model_buffers(self, params))
        loss = ev.first()          # forward with grad and a backward (ours or the closure's)
        f0 = ev.loss0               # rank-averaged float of the start loss
        f = ev.trial()              # forward under no_grad at the current parameters
        ev.finish()                 # leave the generators where the first evaluation left them

    A third case: gradients already in ``.grad`` that the optimizer's own last backward did not
    produce (a backward outside ``step()``, gradient accumulation with accelerate, the HF Trainer)
    and a loss-only closure, or ``given=True`` (a closure bound with ``set_closure`` and ``step()``
    called without one): then :attr:`given` is true, those gradients are the step's, and the first
    evaluation only measures the loss (its buffer updates are undone).

    After :meth:`first`, :attr:`torch_style` tells which convention the closure follows and
    :attr:`slope_grads` is ``None`` when the ``.grad`` fields are the gradient of the returned loss,
    else one tensor (or ``None``) per parameter: the gradient of the returned loss when the closure
    added it to gradients accumulated before (the Armijo slope must use that one).

    ``grad_scaler`` (a ``torch.amp.GradScaler``): a loss-only closure's loss is scaled before the
    optimizer's backward; the caller unscales with :func:`unscale_grads`.
    """

    def __init__(
        self,
        closure: Callable[[], torch.Tensor] | None,
        params: Sequence[torch.Tensor],
        reducer: Reducer | None = None,
        buffers: ModelBuffers | None = None,
        grad_scaler=None,
        owner=None,
        given: bool = False,
    ) -> None:
        if closure is None:
            raise ClosureError(
                "step() needs a closure: this optimizer evaluates the loss at trial points. If "
                "your loop calls backward() itself and then step() without arguments (Hugging Face "
                "Trainer, accelerate), bind the loss with optimizer.set_closure(lambda: "
                "loss_fn(model(x), y)) before each step (for the Trainer: "
                "autostep.integrations.hf.attach(trainer)).\n" + CLOSURE_CONTRACT
            )
        if not callable(closure):
            raise ClosureError(
                f"step() got {type(closure).__name__} {closure!r} as closure; pass a function that "
                f"returns the loss.\n{CLOSURE_CONTRACT}"
            )
        _install_backward_wrapper()
        self.closure = closure
        self.params = list(params)
        self.reducer = reducer or Reducer()
        self.buffers = buffers if buffers is not None else ModelBuffers(self.params)
        self.grad_scaler = grad_scaler
        self.forwards = 0
        self.backwards = 0
        self.loss0: float = math.nan
        self.device = torch.device("cpu")
        self.torch_style: bool | None = None
        self.slope_grads: list | None = None
        self._rng_before: RNGSnapshot | None = None
        self._rng_after: RNGSnapshot | None = None
        self._grads: list = []
        self.loss_eps = 0.0
        self._loss_t: torch.Tensor | None = None
        self._undo: tuple | None = None
        # for abort(): buffers, .grad objects and the values a torch-style closure accumulated
        # into, as they were before the first evaluation
        self._pre_buffers: list | None = None
        self._before: list | None = None
        self._pre_grads: list | None = None
        self.owner = owner
        self.force_given = given
        self.given = False

    # ------------------------------------------------------------------ first evaluation
    def _start(self, with_grad: bool, read: bool = True) -> torch.Tensor:
        """Evaluate the closure at the start point and tell the conventions apart.

        ``with_grad=False`` (:meth:`measure`) keeps the ``.grad`` fields out of the closure's reach
        and skips its ``backward()``.  On any failure buffers, generators and ``.grad`` are put back.
        ``read=False`` leaves the loss on the device (no host sync) for :meth:`read_start`, keeping
        what is needed to undo the evaluation until then.
        """
        self._rng_before = RNGSnapshot()
        before = _grad_fingerprint(self.params)
        self._prev_own = getattr(self.owner, "_autostep_own_grads", None)
        given = with_grad and (self.force_given or self._foreign_grads())
        if self.force_given:
            with_grad = False  # a bound closure only evaluates the loss: no graph
        rec = _Recorder(self.params, skip=not with_grad)
        self._undo = (before, rec)
        if not with_grad:
            for p in self.params:
                p.grad = None
        try:
            with self.buffers.first_eval():
                with torch.set_grad_enabled(with_grad), _recording(rec):
                    loss = self.closure()
            loss = _check_loss(loss, "at the start point")
            if self.reducer.active:  # FSDP1's shard groups, and whether anything is sharded
                self.reducer.observe(self.buffers.modules(), self.params)
            if with_grad:
                changed = any(_replaced(p.grad, g, v) for p, (g, v) in zip(self.params, before))
                self.torch_style = rec.calls > 0 or changed
            else:
                self.torch_style = rec.calls > 0 and not self.force_given
                for p, (g, _) in zip(self.params, before):
                    p.grad = g
            if given and not self.torch_style and self._any_nonzero_grad():
                # gradients computed outside step() (accelerate, the HF Trainer, a backward of
                # your own): they are the step's gradients; this evaluation only measured the
                # loss, so its buffer updates (a second BatchNorm update) are undone
                self.given = True
                self.buffers.restore()
            elif self.force_given:
                raise ClosureError(
                    "step() without a closure found no gradient: call backward() on the loss "
                    "before step() (the closure bound with set_closure() only evaluates the loss)."
                )
            if with_grad and not self.torch_style and not self.given and not loss.requires_grad:
                raise ClosureError(
                    "The loss returned by the closure does not require grad (it was computed under "
                    "torch.no_grad(), detached, or no parameter takes part in it), and the closure "
                    "did not call backward() itself. Compute it from the model's output without "
                    ".detach() or .item().\n" + CLOSURE_CONTRACT
                )
            self.forwards += 1
            self.backwards += rec.calls if with_grad else 0
            self.device = loss.device
            self.loss_eps = torch.finfo(loss.dtype).eps if loss.is_floating_point() else 0.0
            self._loss_t = loss.detach()
            if read:
                self.loss0 = self.reducer.mean([self._loss_t.item()], loss.device)[0]
                self._check_loss0()
        except BaseException:
            self._undo_start()
            raise
        if self.torch_style and rec.diff is not None:
            self.slope_grads = rec.diff
        self._before, self._pre_grads = before, rec.pre
        self._pre_buffers = self.buffers._items  # the copies taken before this evaluation
        return loss

    def _foreign_grads(self) -> bool:
        """Gradients in ``.grad`` that the optimizer's own last backward did not produce."""
        if not any(p.grad is not None for p in self.params):
            return False
        own = getattr(self.owner, "_autostep_own_grads", None) or {}
        for p in self.params:
            g = p.grad
            if g is None:
                continue
            ref = own.get(id(p))
            if ref is None or ref[0]() is not g or ref[1] != g._version:
                return True
        return False

    def _any_nonzero_grad(self) -> bool:
        return any(bool(p.grad.any()) for p in self.params if p.grad is not None)

    def _note_own_grads(self) -> None:
        if self.owner is None:
            return
        own = {}
        if not self.torch_style and not self.given:
            own = {id(p): (weakref.ref(p.grad), p.grad._version) for p in self.params
                   if p.grad is not None}
        try:
            self.owner._autostep_own_grads = own
        except AttributeError:  # pragma: no cover
            pass

    def _undo_start(self) -> None:
        """Put buffers, generators and ``.grad`` back as they were before :meth:`_start`."""
        self._restore_own()
        before, rec = self._undo
        self.buffers.restore()
        self._rng_before.restore()
        for i, (p, (g, v)) in enumerate(zip(self.params, before)):
            p.grad = g
            if rec.pre is not None and rec.pre[i] is not None and g is not None:
                with torch.no_grad():
                    g.copy_(rec.pre[i])

    def _check_loss0(self) -> None:
        if not math.isfinite(self.loss0):
            raise NonFiniteLossError(
                f"The loss at the start of the step is {self.loss0}; nothing was changed. "
                "Check the data and the model for NaN/inf, or lower the initial step size `lr`."
            )

    def read_start(self, extra: torch.Tensor | None = None) -> list[float]:
        """The deferred read of ``first(read=False)``: the start loss and the 1-d tensor ``extra``
        (gradient-derived scalars that feed decisions) in **one** device-to-host transfer and one
        rank average.  Sets :attr:`loss0` and returns the floats of ``extra``.

        A non-finite start loss undoes the first evaluation -- module buffers, generators and the
        ``.grad`` fields as before it -- and raises :class:`NonFiniteLossError`: the step changed
        nothing, as with an immediate read -- except that a loss-only closure's old ``.grad``
        tensors are not kept through the backward (that would cost a gradient's memory every step):
        they are left cleared (``None``), as the next step would clear them anyway.
        """
        vals = self._loss_t.reshape(1).to(torch.float64)
        if extra is not None and extra.numel():
            vals = torch.cat([vals, extra.detach().reshape(-1).to(vals.device, torch.float64)])
        out = self.reducer.mean(vals.tolist(), self.device)
        self.loss0 = out[0]
        try:
            self._check_loss0()
        except NonFiniteLossError:
            self._undo_start()
            raise
        finally:
            self._undo = None
        self._after_start()
        return out[1:]

    def _after_start(self) -> None:
        self._rng_after = RNGSnapshot()
        self._grads = [p.grad for p in self.params]
        # the copies taken before the first evaluation stay with us for abort(); save() makes new
        # ones of the buffers as the first evaluation left them (kept; trials' updates are not)
        self.buffers._items = []
        self.buffers.save()

    def first(self, read: bool = True) -> torch.Tensor:
        """Evaluate the closure with grad enabled; back-propagate unless the closure did.

        With a loss-only closure the old gradients are cleared (set to ``None``) before the
        optimizer's ``backward()``; a torch-style closure's gradients are used as it left them.  If
        the loss is not finite, buffers, generators and gradients are restored and
        :class:`NonFiniteLossError` is raised: the step changes nothing.

        ``read=False`` defers the host read of the loss, and that check, to :meth:`read_start`, so
        that it shares one device-to-host transfer with the optimizer's own scalars.
        """
        loss = self._start(with_grad=True, read=read)
        if not self.torch_style and not self.given and not read:
            # the old gradients are not kept for an undo: holding them through the backward would
            # cost a gradient's memory (and, on CPU, fresh pages) every step; a non-finite start
            # loss found by read_start() leaves .grad cleared (None) instead
            before, rec = self._undo
            self._undo = ([(None, v) for _, v in before], rec)
        if not self.torch_style and not self.given:
            for p in self.params:
                p.grad = None
            with torch.enable_grad():  # step() runs under no_grad; the scaling must be recorded
                target = loss if self.grad_scaler is None else self.grad_scaler.scale(loss)
                target.backward()
            self.backwards += 1
        self._note_own_grads()
        if read:
            self._undo = None
            self._after_start()
        return loss.detach()

    def measure(self) -> torch.Tensor:
        """First evaluation of a step that only measures: like :meth:`first` without a backward.

        The closure runs under ``torch.no_grad()`` at the current parameters (its buffer updates are
        kept, as a first evaluation's are) with the ``.grad`` fields set aside and a ``backward()``
        of its own skipped, so gradients stay as they are with either convention.  The generator
        state is snapshotted so :meth:`trial` replays the same random numbers.  A non-finite loss
        restores buffers and generators and raises :class:`NonFiniteLossError`.  Used by LABPAL's
        approximation phase.
        """
        loss = self._start(with_grad=False)
        self.reducer.release_unsharded()  # FSDP1: the trials gather the moved shards
        self._undo = None
        self._after_start()
        return loss.detach()

    def modules_seen(self) -> list:
        """Modules of the optimized models, those that ran first in that order (per-module grouping)."""
        return self.buffers.modules()

    def reduce(self, values: Sequence[float]) -> list[float]:
        """Average floats over ranks (identity when not distributed)."""
        return self.reducer.mean(values, self.device)

    # ------------------------------------------------------------------ trials
    def trial(self) -> float:
        """Evaluate the closure under ``torch.no_grad()`` at the current parameters.

        Replays the generator state of the first evaluation, restores the models' buffers afterwards,
        and returns the rank-averaged loss as a float (``inf`` stands for NaN so comparisons reject
        it).  The closure runs with the ``.grad`` fields set aside (a ``zero_grad()`` in it cannot
        touch them) and a ``backward()`` of its own is skipped.
        """
        assert self._rng_before is not None, "first() must run before trial()"
        self._rng_before.restore()
        rec = _Recorder(self.params, skip=True)
        for p in self.params:  # out of reach of a zero_grad() in the closure
            p.grad = None
        try:
            with torch.no_grad(), _recording(rec):
                out = self.closure()
        finally:
            for p, g in zip(self.params, self._grads):
                p.grad = g
            self.buffers.restore()
            self.reducer.release_unsharded()  # FSDP1: the next forward gathers the moved shards
        out = _check_loss(out, "at a trial point")
        self.forwards += 1
        value = self.reducer.mean([out.detach().item()], self.device)[0]
        return value if math.isfinite(value) else math.inf

    def refresh_grad_versions(self) -> None:
        """Kept for callers of the older API (trials no longer check ``.grad`` versions)."""

    def abort(self) -> None:
        """Undo what the evaluations of a step that is failing left behind, whatever the point of
        failure after a successful start: the module buffers the first evaluation changed
        (BatchNorm statistics), the ``.grad`` fields (a torch-style closure's accumulation
        included) and the generator state, back to before the step, so a retried step sees the
        same random numbers.  :meth:`finish` then does nothing."""
        if self._pre_buffers is not None:
            _restore_items(self._pre_buffers)
        if self._before is not None:
            pre = self._pre_grads
            for i, (p, (g, _)) in enumerate(zip(self.params, self._before)):
                if pre is not None and pre[i] is not None and g is not None:
                    with torch.no_grad():  # a torch-style closure accumulated into it in place
                        g.copy_(pre[i])
                p.grad = g
        if self._rng_before is not None:
            self._rng_before.restore()
        self._rng_after = None
        self._restore_own()

    def _restore_own(self) -> None:
        """Which ``.grad`` tensors count as the optimizer's own, as before the step."""
        if self.owner is not None and hasattr(self, "_prev_own"):
            try:
                self.owner._autostep_own_grads = self._prev_own
            except AttributeError:  # pragma: no cover
                pass

    def finish(self) -> None:
        """Leave the generators where the first evaluation left them."""
        if self._rng_after is not None:
            self._rng_after.restore()
