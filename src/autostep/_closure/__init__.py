"""Evaluating a user closure the way every autostep line search needs it.

This package holds the torch plumbing that is shared by all optimizers (and by the LR search and the
AutoLR wrapper), one concern per module:

* ``contract.py`` -- :data:`CLOSURE_CONTRACT`, :class:`ClosureError`, :class:`NonFiniteLossError`
  and the checks of a closure and of the loss it returns.
* :class:`RNGSnapshot` (the generator states replayed before each re-evaluation) comes from
  autostep's one snapshot module, ``autostep/_snapshot.py``, and is re-exported here.
* ``buffers.py`` -- :class:`ModelBuffers`: the buffers of the model(s) that own the optimized
  parameters (BatchNorm running statistics, ``num_batches_tracked``, any buffer a custom module
  changes in place), saved before trial forwards and put back after them, so trials never change
  the model; and :class:`BufferGuard`, the per-call variant (AutoLR's superbatch losses).
* ``backward.py`` -- the interception of ``torch.autograd.backward`` that records, or skips, a
  torch-style closure's own ``backward()``.
* ``grads.py`` -- which ``.grad`` tensors are whose (the optimizer's own backward, a closure's,
  a loop's outside ``step()``), and :func:`unscale_grads`.
* ``evaluator.py`` -- :class:`ClosureEvaluator`: one step's worth of closure calls: the first
  evaluation with grad enabled (and a backward), then any number of trial evaluations under
  ``torch.no_grad()``, with the closure contract checked and forwards/backwards counted.

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

Which ``step(closure)`` takes what
----------------------------------
* **The line searches** (SLS, AdamSLS, SALSA, ALSALS, PLASLS, PAL, LABPAL): a closure is needed
  (:func:`needs_closure`, their class attribute ``step_requires_closure``), in either convention;
  it is called several times per step (the trials).  Loops that call ``backward()`` themselves
  and ``step()`` without an argument bind a loss-only closure with ``set_closure`` instead.
* **AutoLR**: no closure needed (call ``step()`` after ``backward()``); a closure of either
  convention is called once and its loss returned (a loss-only one is back-propagated by AutoLR).
* **Autostep**: no closure needed; a closure is called once, torch-style (it must call
  ``backward()`` itself), as ``torch.optim.Adam`` calls it.
"""

from .buffers import BufferGuard, ModelBuffers, model_buffers
from .contract import CLOSURE_CONTRACT, ClosureError, NonFiniteLossError, needs_closure
from .evaluator import ClosureEvaluator
from .grads import unscale_grads
from .._snapshot import RNGSnapshot

__all__ = [
    "ClosureError",
    "NonFiniteLossError",
    "RNGSnapshot",
    "BufferGuard",
    "ModelBuffers",
    "ClosureEvaluator",
    "CLOSURE_CONTRACT",
    "unscale_grads",
    "model_buffers",
    "needs_closure",
]
