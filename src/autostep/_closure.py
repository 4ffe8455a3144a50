"""Evaluating a user closure the way every autostep line search needs it.

This module holds the torch plumbing that is shared by all optimizers (and by the LR search and the
AutoLR wrapper):

* :class:`RNGSnapshot` -- the CPU and CUDA generator states, captured and restored, so that every
  evaluation inside one step sees the same dropout masks.  Python's ``random`` and numpy are never
  touched, and nothing is ever reseeded from the clock.
* :class:`BufferGuard` -- saves the buffers of every module that runs a forward while it watches
  (BatchNorm running statistics, ``num_batches_tracked``, any buffer a custom module changes in
  place) and puts them back afterwards, so trial forwards never change the model.
* :class:`ClosureEvaluator` -- one step's worth of closure calls: the first evaluation with grad
  enabled followed by the optimizer's own ``backward()``, then any number of trial evaluations under
  ``torch.no_grad()``, with the closure contract checked and forwards/backwards counted.

The closure contract
--------------------
``closure()`` computes the mini-batch loss and returns it as a scalar tensor.  It must not call
``backward()`` or ``zero_grad()``: the optimizer clears the old gradients and back-propagates itself,
and calls the closure again under ``torch.no_grad()`` for each trial point.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from .distributed import Reducer

__all__ = [
    "ClosureError",
    "NonFiniteLossError",
    "RNGSnapshot",
    "BufferGuard",
    "ClosureEvaluator",
    "CLOSURE_CONTRACT",
]

CLOSURE_CONTRACT = (
    "The closure must compute the mini-batch loss and return it as a scalar tensor, e.g.\n"
    "    def closure():\n"
    "        return loss_fn(model(x), y)\n"
    "    optimizer.step(closure)\n"
    "It must not call loss.backward() or optimizer.zero_grad(): the optimizer does both itself."
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


class BufferGuard:
    """Remember module buffers as modules run, and put them back on :meth:`restore`.

    While :meth:`watch` is active, a global forward pre-hook records, the first time each module runs,
    a copy of its buffers.  :meth:`restore` writes the copies back into every recorded buffer (in
    place, so references held elsewhere stay valid; a buffer the forward replaced by a new tensor
    is put back too).  No model reference is
    needed: whatever modules the closure runs are covered.
    """

    def __init__(self) -> None:
        self._saved: dict[int, tuple] = {}

    def _hook(self, module: torch.nn.Module, args) -> None:
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


def _grad_fingerprint(params: Sequence[torch.Tensor]) -> list:
    """The ``.grad`` objects themselves with their version counters (compared with ``is``)."""
    return [(p.grad, None if p.grad is None else p.grad._version) for p in params]


def _same_grads(a: list, b: list) -> bool:
    return len(a) == len(b) and all(ga is gb and va == vb for (ga, va), (gb, vb) in zip(a, b))


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


class ClosureEvaluator:
    """All closure calls of one optimizer step.

    Usage (inside an optimizer's ``step``)::

        ev = ClosureEvaluator(closure, params, reducer)
        loss = ev.first()          # forward with grad, contract checks, zero grads, backward
        f0 = ev.loss0               # rank-averaged float of the start loss
        f = ev.trial()              # forward under no_grad at the current parameters
        ev.finish()                 # leave the generators where the first evaluation left them

    ``extra`` floats passed to :meth:`first` are averaged over ranks in the same all-reduce as the
    start loss (use it for gradient-derived scalars that feed decisions).
    """

    def __init__(
        self,
        closure: Callable[[], torch.Tensor] | None,
        params: Sequence[torch.Tensor],
        reducer: Reducer | None = None,
    ) -> None:
        if closure is None:
            raise ClosureError(
                "step() needs a closure: this optimizer evaluates the loss at trial points.\n"
                + CLOSURE_CONTRACT
            )
        if not callable(closure):
            raise ClosureError(
                f"step() got {type(closure).__name__} {closure!r} as closure; pass a function that "
                f"returns the loss.\n{CLOSURE_CONTRACT}"
            )
        self.closure = closure
        self.params = list(params)
        self.reducer = reducer or Reducer()
        self.forwards = 0
        self.backwards = 0
        self.loss0: float = math.nan
        self.device = torch.device("cpu")
        self._rng_before: RNGSnapshot | None = None
        self._rng_after: RNGSnapshot | None = None
        self._guard = BufferGuard()
        self._grads: list = []
        self._gv: list = []
        self.first_guard: BufferGuard | None = None
        self.loss_eps = 0.0

    # ------------------------------------------------------------------ first evaluation
    def _start(self, with_grad: bool) -> torch.Tensor:
        """Evaluate the closure at the start point and check the contract (shared by first/measure).

        On any failure buffers and generators are restored and the gradients are untouched.
        """
        self._rng_before = RNGSnapshot()
        before = _grad_fingerprint(self.params)
        guard = self.first_guard = BufferGuard()
        try:
            with torch.set_grad_enabled(with_grad), guard.watch():
                try:
                    loss = self.closure()
                except RuntimeError as exc:
                    if not with_grad and "does not require grad" in str(exc):
                        raise ClosureError(
                            "The closure called backward() (this evaluation runs under "
                            "torch.no_grad()). Remove that call from the closure.\n" + CLOSURE_CONTRACT
                        ) from exc
                    raise
            loss = _check_loss(loss, "at the start point")
            if not _same_grads(_grad_fingerprint(self.params), before):
                raise ClosureError(
                    "The closure changed the parameters' .grad (it called backward() or "
                    "zero_grad()). Remove those calls from the closure.\n" + CLOSURE_CONTRACT
                )
            if with_grad and not loss.requires_grad:
                raise ClosureError(
                    "The loss returned by the closure does not require grad (it was computed under "
                    "torch.no_grad(), detached, or no parameter takes part in it). Compute it from "
                    "the model's output without .detach() or .item().\n" + CLOSURE_CONTRACT
                )
            self.forwards += 1
            self.device = loss.device
            self.loss_eps = torch.finfo(loss.dtype).eps if loss.is_floating_point() else 0.0
            self.loss0 = self.reducer.mean([loss.detach().item()], loss.device)[0]
            if not math.isfinite(self.loss0):
                raise NonFiniteLossError(
                    f"The loss at the start of the step is {self.loss0}; nothing was changed. "
                    "Check the data and the model for NaN/inf, or lower the initial step size `lr`."
                )
        except BaseException:
            guard.restore()
            self._rng_before.restore()
            raise
        return loss

    def _after_start(self) -> None:
        self._rng_after = RNGSnapshot()
        self._grads = [p.grad for p in self.params]
        self._gv = [None if g is None else g._version for g in self._grads]

    def first(self) -> torch.Tensor:
        """Evaluate the closure with grad enabled, check the contract, and back-propagate.

        Old gradients are cleared (set to ``None``) before ``backward()``.  If the loss is not
        finite, buffers and generators are restored, the gradients are left untouched, and
        :class:`NonFiniteLossError` is raised: the step changes nothing.
        """
        loss = self._start(with_grad=True)
        for p in self.params:
            p.grad = None
        loss.backward()
        self.backwards += 1
        self._after_start()
        return loss.detach()

    def measure(self) -> torch.Tensor:
        """First evaluation of a step that only measures: like :meth:`first` without the backward.

        The closure runs under ``torch.no_grad()`` at the current parameters (its buffer updates are
        kept, as a first evaluation's are), gradients are left as they are, the contract is checked
        (a ``backward()``/``zero_grad()`` inside the closure is refused), and the generator state is
        snapshotted so :meth:`trial` replays the same random numbers.  A non-finite loss restores
        buffers and generators and raises :class:`NonFiniteLossError`.  Used by LABPAL's
        approximation phase.
        """
        loss = self._start(with_grad=False)
        self._after_start()
        return loss.detach()

    def modules_seen(self) -> list:
        """Modules that ran during the first evaluation, in order (for per-module grouping)."""
        return self.first_guard.modules() if self.first_guard is not None else []

    def reduce(self, values: Sequence[float]) -> list[float]:
        """Average floats over ranks (identity when not distributed)."""
        return self.reducer.mean(values, self.device)

    # ------------------------------------------------------------------ trials
    def trial(self) -> float:
        """Evaluate the closure under ``torch.no_grad()`` at the current parameters.

        Replays the generator state of the first evaluation, restores module buffers afterwards, and
        returns the rank-averaged loss as a float (``inf`` stands for NaN so comparisons reject it).
        """
        assert self._rng_before is not None, "first() must run before trial()"
        self._rng_before.restore()
        try:
            with torch.no_grad(), self._guard.watch():
                out = self.closure()
        finally:
            self._guard.restore()
        out = _check_loss(out, "at a trial point")
        if any(p.grad is not g for p, g in zip(self.params, self._grads)) or any(
            g is not None and g._version != v for g, v in zip(self._grads, self._gv)
        ):
            raise ClosureError(
                "The closure changed the parameters' .grad during a trial evaluation (it called "
                "zero_grad() or backward()). Remove those calls from the closure.\n"
                + CLOSURE_CONTRACT
            )
        self.forwards += 1
        value = self.reducer.mean([out.detach().item()], self.device)[0]
        return value if math.isfinite(value) else math.inf

    def refresh_grad_versions(self) -> None:
        """Call after the optimizer itself modified ``.grad`` in place (rare)."""
        self._gv = [None if g is None else g._version for g in self._grads]

    def finish(self) -> None:
        """Leave the generators where the first evaluation left them."""
        if self._rng_after is not None:
            self._rng_after.restore()
