"""The Hugging Face ``Trainer`` with autostep's line searches: one line, ``attach(trainer)``.

The Trainer runs forward and backward itself and then calls ``optimizer.step()`` without a closure,
so a line search has no way to evaluate the loss at its trial points.  :func:`attach` wraps the
trainer's ``training_step`` so that, after each micro-batch, the optimizer gets a loss-only closure
for that batch (:meth:`~autostep.optim._optimizer.AutostepOptimizer.set_closure`).  ``step()`` then
uses the gradients the Trainer computed -- accumulated over ``gradient_accumulation_steps`` and
clipped to ``max_grad_norm`` -- and evaluates ``trainer.compute_loss`` on the last micro-batch under
``torch.no_grad()`` for the start loss and each trial (inside the Trainer's autocast context).

Usage::

    opt = autostep.SALSA(model.parameters())
    trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))
    autostep.integrations.hf.attach(trainer)
    trainer.train()

The Trainer's default linear schedule then caps the step size (see "Step size and schedulers" in
the optimizers' docstrings).  With gradient accumulation the search measures the loss of the last
micro-batch along the accumulated direction.
"""

from __future__ import annotations

from .._closure import needs_closure

__all__ = ["attach"]


def _autostep_optimizer(opt):
    """The autostep optimizer inside ``opt`` (accelerate's AcceleratedOptimizer wraps it)."""
    seen = 0
    while opt is not None and seen < 8:
        if needs_closure(opt):
            return opt
        opt = getattr(opt, "optimizer", None)
        seen += 1
    return None


def attach(trainer):
    """Let ``trainer`` (a ``transformers.Trainer``) drive an autostep optimizer; returns it.

    Idempotent.  Trainers whose optimizer is not an autostep closure optimizer are left working as
    before (the wrapper binds nothing for them).
    """
    if getattr(trainer, "_autostep_attached", False):
        return trainer
    original = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        out = original(model, inputs, num_items_in_batch)
        opt = _autostep_optimizer(trainer.optimizer)
        if opt is not None:
            opt.set_closure(_closure(trainer, model, inputs))
        return out

    trainer.training_step = training_step
    trainer._autostep_attached = True
    return trainer


def _closure(trainer, model, inputs):
    prepared: dict = {}

    def closure():
        if "inputs" not in prepared:
            prepared["inputs"] = trainer._prepare_inputs(inputs)
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, dict(prepared["inputs"]))
        return loss.mean() if loss.dim() else loss

    return closure
