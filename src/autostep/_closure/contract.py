"""The closure contract: what a closure passed to ``step(closure)`` must return, the errors that
say it did not, and the checks that raise them (see :mod:`autostep._closure` for the two
conventions)."""

from __future__ import annotations

import torch

from .. import _validate as V

__all__ = ["CLOSURE_CONTRACT", "ClosureError", "NonFiniteLossError", "check_closure", "check_loss",
           "needs_closure"]

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


def needs_closure(optimizer) -> bool:
    """Whether ``optimizer.step()`` needs a loss closure (or one bound with ``set_closure``).

    The one place that says it: the class attribute ``step_requires_closure`` (torch's name for
    the flag in its optimizer tests), ``True`` on every autostep line search, absent (``False``)
    on torch's optimizers, :class:`~autostep.AutoLR` and :class:`~autostep.Autostep`.  Read by the
    registry (a method's ``kind``), the benchmark (through it) and the Hugging Face integration.
    Takes an optimizer or an optimizer class.
    """
    return bool(getattr(optimizer, "step_requires_closure", False))


def check_closure(closure) -> None:
    """Refuse a missing or non-callable closure with the contract in the message."""
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


def check_loss(value, where: str) -> torch.Tensor:
    """autostep's one scalar-loss check (:func:`autostep._validate.check_loss`) in the closure's
    words: raises :class:`ClosureError` with the contract appended."""
    return V.check_loss(value, where, source="The closure", error=ClosureError,
                        contract=CLOSURE_CONTRACT)
