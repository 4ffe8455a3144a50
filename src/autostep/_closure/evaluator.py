"""One step's worth of closure calls (:class:`ClosureEvaluator`).

The first evaluation runs with grad enabled (and a backward, the optimizer's or the closure's own),
telling the two closure conventions apart (see :mod:`autostep._closure`); then any number of trial
evaluations run under ``torch.no_grad()`` with the generators replayed and the module buffers put
back; forwards and backwards are counted.  Usage (inside an optimizer's ``step``)::

    ev = ClosureEvaluator(closure, params, reducer, buffers=model_buffers(self, params))
    loss = ev.first()          # forward with grad and a backward (ours or the closure's)
    f0 = ev.loss0              # rank-averaged float of the start loss
    f = ev.trial()             # forward under no_grad at the current parameters
    ev.finish()                # leave the generators where the first evaluation left them
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..distributed import Reducer
from .backward import Recorder, install_backward_wrapper, recording
from .buffers import ModelBuffers, restore_items
from .contract import ClosureError, NonFiniteLossError, CLOSURE_CONTRACT, check_closure, check_loss
from .grads import (OWN_GRADS, any_nonzero_grad, foreign_grads, grad_fingerprint, note_own_grads,
                    releasable, replaced, set_own_grads)
from .._snapshot import RNGSnapshot

__all__ = ["ClosureEvaluator"]


#: machine epsilon per loss dtype (``torch.finfo`` costs a microsecond or two per call)
_EPS: dict = {}


def _eps(dtype) -> float:
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    _EPS[dtype] = eps
    return eps


class ClosureEvaluator:
    """All closure calls of one optimizer step.

    Usage: see the module docstring.

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
        check_closure(closure)
        install_backward_wrapper()
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
        self._trials_ready = True
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
        self._prev_own = getattr(self.owner, OWN_GRADS, None)
        given = with_grad and (self.force_given or foreign_grads(self.owner, self.params))
        if with_grad and not given and self._prev_own:
            # what is in .grad is what the previous step left (the optimizer's own backward, or a
            # torch-style closure's), unchanged since (not foreign, so not accumulated into):
            # released before the forward, as zero_grad(set_to_none=True) would, so it does not
            # sit beside this step's activations and new gradients (one gradient of memory at the
            # backward's peak).  A step that fails leaves .grad None there; the next step would
            # replace it anyway (a torch-style closure zeroes it; one that does not starts from
            # this step's gradient, not from the previous step's).  Views and persistent
            # gradients a closure accumulates into are kept (see note_own_grads).
            own = self._prev_own
            for p in self.params:
                if p.grad is not None and releasable(own, p):
                    p.grad = None
        before = grad_fingerprint(self.params)
        if self.force_given:
            with_grad = False  # a bound closure only evaluates the loss: no graph
        rec = Recorder(self.params, skip=not with_grad)
        self._undo = (before, rec)
        if not with_grad:
            for p in self.params:
                p.grad = None
        try:
            with self.buffers.first_eval():
                # grad mode as a function call, not a context object (cheaper on the hot path)
                prev = torch.is_grad_enabled()
                torch.set_grad_enabled(with_grad)
                try:
                    with recording(rec):
                        loss = self.closure()
                finally:
                    torch.set_grad_enabled(prev)
            loss = check_loss(loss, "at the start point")
            if self.reducer.active:  # FSDP1's shard groups, and whether anything is sharded
                self.reducer.observe(self.buffers.modules(), self.params)
            if with_grad:
                changed = any(replaced(p.grad, g, v) for p, (g, v) in zip(self.params, before))
                self.torch_style = rec.calls > 0 or changed
            else:
                self.torch_style = rec.calls > 0 and not self.force_given
                for p, (g, _) in zip(self.params, before):
                    p.grad = g
            if given and not self.torch_style and any_nonzero_grad(self.params):
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
            self.loss_eps = _EPS.get(loss.dtype) or _eps(loss.dtype)
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

    def read_start(self, extra: torch.Tensor | None = None, trials: bool = True) -> list[float]:
        """The deferred read of ``first(read=False)``: the start loss and the 1-d tensor ``extra``
        (gradient-derived scalars that feed decisions) in **one** device-to-host transfer and one
        rank average.  Sets :attr:`loss0` and returns the floats of ``extra``.

        A non-finite start loss undoes the first evaluation -- module buffers, generators and the
        ``.grad`` fields as before it -- and raises :class:`NonFiniteLossError`: the step changed
        nothing, as with an immediate read -- except that a loss-only closure's old ``.grad``
        tensors are not kept through the backward (that would cost a gradient's memory every step):
        they are left cleared (``None``), as the next step would clear them anyway.
        """
        loss = self._loss_t.reshape(1)
        if extra is None or not extra.numel():
            vals = loss
        elif (loss.is_floating_point() and extra.is_floating_point()
              and extra.device == loss.device):
            # floats of any width: cat promotes to the widest, exactly, and tolist() gives the
            # same Python floats as float64 conversions would, without two of them (issue 13)
            vals = torch.cat([loss, extra.detach().reshape(-1)])
        else:
            vals = torch.cat([loss.to(torch.float64),
                              extra.detach().reshape(-1).to(loss.device, torch.float64)])
        out = self.reducer.mean(vals.tolist(), self.device)
        self.loss0 = out[0]
        try:
            self._check_loss0()
        except NonFiniteLossError:
            self._undo_start()
            raise
        finally:
            self._undo = None
        self._after_start(trials)
        return out[1:]

    def _after_start(self, trials: bool = True) -> None:
        """Ready the trials: the generator state after the first evaluation, the gradients to put
        back around each trial, the buffers as the first evaluation left them.  ``trials=False``
        (a step that evaluates nothing more: an amortised reuse, a LABPAL update) skips the
        snapshot and the copies: the generators and buffers are where the step leaves them."""
        self._grads = [p.grad for p in self.params]
        self._trials_ready = trials
        if not trials:
            return
        self._rng_after = RNGSnapshot()
        # the copies taken before the first evaluation stay with us for abort(); save() makes new
        # ones of the buffers as the first evaluation left them (kept; trials' updates are not)
        self.buffers._items = []
        self.buffers.save()

    def first(self, read: bool = True) -> torch.Tensor:
        """Evaluate the closure with grad enabled; back-propagate unless the closure did.

        With a loss-only closure the old gradients are cleared (set to ``None``) before the
        optimizer's ``backward()`` -- those the previous step left already before the forward
        (:meth:`_start`, with either convention), so they are not alive beside the activations;
        a torch-style closure's gradients are used as it left them.  If
        the loss is not finite, buffers, generators and gradients are restored and
        :class:`NonFiniteLossError` is raised: the step changes nothing.

        ``read=False`` defers the host read of the loss, and that check, to :meth:`read_start`, so
        that it shares one device-to-host transfer with the optimizer's own scalars.
        """
        loss = self._start(with_grad=True, read=read)
        if not self.torch_style and not self.given and not read:
            # a non-finite start loss found by read_start() leaves .grad cleared (None), not the
            # old gradients.  (The optimizer's own old gradients were released before the
            # forward; others -- set by hand between steps of a loss-only closure, which then
            # are not "given" because they are all zero -- stay alive through the backward:
            # ``_before`` keeps them for abort(), which puts .grad back when the step raises.)
            before, rec = self._undo
            self._undo = ([(None, v) for _, v in before], rec)
        if not self.torch_style and not self.given:
            for p in self.params:
                p.grad = None
            with torch.enable_grad():  # step() runs under no_grad; the scaling must be recorded
                target = loss if self.grad_scaler is None else self.grad_scaler.scale(loss)
                target.backward()
            self.backwards += 1
        # (only a torch-style closure can leave a tensor that existed before it: the optimizer's
        # own backward runs on .grad None)
        existing = (frozenset(id(g) for g, _ in self._before if g is not None)
                    if self.torch_style else frozenset())
        note_own_grads(self.owner, self.params, not self.torch_style and not self.given,
                       left=bool(self.torch_style), existing=existing)
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
        assert self._trials_ready, "read_start(trials=False) promised that no trial follows"
        self._rng_before.restore()
        rec = Recorder(self.params, skip=True)
        for p in self.params:  # out of reach of a zero_grad() in the closure
            p.grad = None
        prev = torch.is_grad_enabled()  # (off inside step(); turned off here when it is not)
        try:
            if prev:
                torch.set_grad_enabled(False)
            with recording(rec):
                out = self.closure()
        finally:
            if torch.is_grad_enabled() != prev:
                torch.set_grad_enabled(prev)
            for p, g in zip(self.params, self._grads):
                p.grad = g
            self.buffers.restore()
            self.reducer.release_unsharded()  # FSDP1: the next forward gathers the moved shards
        out = check_loss(out, "at a trial point")
        self.forwards += 1
        value = self.reducer.mean([out.detach().item()], self.device)[0]
        return value if math.isfinite(value) else math.inf

    def abort(self) -> None:
        """Undo what the evaluations of a step that is failing left behind, whatever the point of
        failure after a successful start: the module buffers the first evaluation changed
        (BatchNorm statistics), the ``.grad`` fields (a torch-style closure's accumulation
        included) and the generator state, back to before the step, so a retried step sees the
        same random numbers.  :meth:`finish` then does nothing."""
        if self._pre_buffers is not None:
            restore_items(self._pre_buffers)
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
            set_own_grads(self.owner, self._prev_own)

    def finish(self) -> None:
        """Leave the generators where the first evaluation left them."""
        if self._rng_after is not None:
            self._rng_after.restore()
