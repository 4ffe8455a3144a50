"""AutoLR: the explore/exploit learning-rate wrapper around any torch optimizer.

Implements *AutoLR: a method for automatic tuning of learning rate* (``autolr-explore-exploit.txt``)
as a transparent wrapper.  The training loop stays the ordinary one::

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    autolr = autostep.AutoLR(opt, model, loss_fn, train_loader, total_steps=10_000)
    for x, y in batches:
        loss = loss_fn(model, (x, y))
        loss.backward()
        autolr.step()
        autolr.zero_grad()

What the wrapper does (paper section in brackets)
-------------------------------------------------
* **Quadratic in the learning-rate perturbation** [2].  At a recompute it takes the direction ``d``
  that the wrapped optimizer would apply per unit learning rate (the *real* next update, with momentum
  buffers, Adam moments, weight decay: see "Search direction" below), evaluates the superbatch loss at
  ``theta - (eta + eps) d`` for ``num_samples`` offsets ``eps`` (5 by default, 3 allowed), fits
  ``k0 + k1 eps + k2 eps^2`` by least squares and takes ``eps_min = -k1 / (2 k2)``.
* **Epsilon thresholding** [2, eq. 3].  The cubic error is approximated by ``|eps|^3`` and bounded by
  ``r * L(theta)``: ``eps_min`` is clipped to ``+-(r L(theta))^(1/3)`` (``eps_threshold`` = r, 1e-3 as in
  Table 7), where ``L(theta)`` is the superbatch loss at the current parameters.  The bound is absolute
  in ``eps``: with Adam-like rates (~1e-3) and r = 1e-3 one decision may raise the rate ~100-fold, which
  is why the paper uses r = 1e-9 .. 1e-12 for its low-rate (NLP) runs; scale ``eps_threshold`` so that
  ``(r L)^(1/3)`` is of the order of the rate you expect.
* **Superbatch** [2.2, App. B].  ``superbatch`` mini-batches drawn from ``probe_data``.  A fresh one is
  drawn for every estimate and used for every ``eps`` of it; the loss-drop rates use one fixed
  superbatch drawn at the first step (the two ends of every rate, and all rates compared with each
  other, come from the same superbatch).  A superbatch loss is the mean of one forward per
  mini-batch, so peak memory stays at one mini-batch.
* **Explore phase** [2.1].  For the first ``explore_steps`` steps the rate is recomputed every
  ``recompute_every`` steps and may only rise (a negative ``eps_min`` leaves it unchanged).
* **Exploit phase** [2.1].  The loss-drop rate is measured every ``recompute_every`` steps; the rate is
  recomputed only when the saturation threshold is crossed: relative at first (drop rate when the
  current rate started / current drop rate >= ``saturation_threshold``, 100 as Table 7), then, from the
  first crossing on, absolute with the drop rate at that crossing as threshold.
* **Rollback** [2.2].  Model and optimizer are snapshotted at every learning-rate change; if the change
  reduced the loss-drop rate, the snapshot is restored and the old rate kept.
* **Decision log.**  :attr:`AutoLR.history` lists every decision as a dict.

Choices the paper leaves open (documented, and visible in :attr:`AutoLR.history`)
-----------------------------------------------------------------------------------
* Sample offsets: ``eps_i`` evenly spaced in ``[-h, h]`` with ``h = (r L(theta))^(1/3)``, the bound of
  eq. 3: the samples cover the region where the quadratic is trusted, which is also the region the
  decision may move to (a sample with ``eta + eps < 0`` is just a point behind ``theta`` on the line).
  Sampling only near ``eta`` (e.g. ``+-eta/2``) while allowing moves up to the bound made the fit
  extrapolate: at small rates float32 loss noise decided the sign of ``eps_min`` and, in our runs, drove
  the rate down to 1e-8.  ``probe_scale`` (default None) optionally caps ``h`` at ``probe_scale * eta``.
* A mini-batch whose loss is not finite is left out of a superbatch loss, with a warning (a NaN
  batch would otherwise make every loss of the fixed drop-rate superbatch NaN and freeze the rate).
  A drop rate between two losses that left out different batches is NaN (not comparable), and so
  are the probe losses of an estimate whose passes left out different batches.
* A concave or flat fit (``k2 <= 0``) has no minimum: ``eps_min`` is ``+-inf`` in the descending
  direction and the threshold clips it.  Non-finite probe losses leave the rate unchanged.
* One decision never sets the rate below ``min_lr_ratio * eta`` (0.1): the thresholded ``eps`` may be
  larger than ``eta`` itself (e.g. Adam at 1e-3 with r = 1e-3), which would make the rate negative.
* The loss-drop rate is ``(L_sb(start of window) - L_sb(end of window)) / updates`` on the rate
  superbatch; ``L(theta)`` of the epsilon threshold is the rate superbatch's loss at the recompute (it
  is measured there anyway, which saves one superbatch pass per estimate).  The "rate when the
  current LR started" is the first positive window rate after the change.  At the relative->absolute
  switch the absolute threshold is ``max(rate, 0)``.
* Rollback is decided one window after the change.  In the exploit phase it follows the paper (the drop
  rate after the change is lower than the one before it).  In the explore phase, where a higher rate is
  kept "even with no improvement in loss" (section 1), a change is rolled back only when the loss *rose*
  over the window (drop rate < 0) or became non-finite; comparing with the previous window's rate there
  would undo almost every increase, because early drop rates fall anyway.  After a rollback the update
  of that step is skipped (its gradient belongs to the abandoned point) and the old rate runs for one
  window without a recompute.
* The first recompute happens after the first window, so a drop rate exists before any change.

Search direction
----------------
The direction is taken from the wrapped optimizer itself: its state (``optimizer.state`` and the
param-group values) is cloned, it steps once with every group's rate set to ``ratio_g * 1`` (``ratio_g``
= the group's rate / group 0's rate at construction), ``d = theta_before - theta_after`` is recorded, and
parameters, state and group values are put back exactly (the clones become the live state).  This is
exact for any optimizer whose update is linear in the learning rate (SGD with momentum, dampening,
Nesterov and weight decay, Adam, AdamW, Adagrad, RMSprop, ...), costs one optimizer step plus a copy of
the parameters and the optimizer state per recompute, and runs the optimizer's step hooks once more.

Randomness, buffers, ranks
--------------------------
All probe and drop-rate forwards run under ``torch.no_grad()`` in the model's current mode; the CPU
and CUDA generators are snapshotted first, replayed before each superbatch pass (same dropout masks for
every ``eps``) and put back afterwards, so the training stream is not shifted; module buffers
(BatchNorm statistics) changed by these forwards are restored.  Every loss that feeds a decision is
averaged over ranks with :class:`~autostep.distributed.Reducer`, so all ranks take the same decisions.

Cost
----
Per recompute: ``num_samples * superbatch`` forward passes, one extra optimizer step, and transiently
two copies of the parameters plus one of the optimizer state.  Per window (every ``recompute_every``
steps, both phases): ``superbatch`` forwards for the drop rate.  With the paper's ratio
``recompute_every = 10 * superbatch`` and a backward costing two forwards, the explore phase costs
``6 * 100 / 3000 = 20 %`` (the paper's 16.6 % counts the 5 probe passes only) and a window of the exploit
phase without a recompute about 3 %.  On a CPU, where a no-grad forward of a small MLP costs about
half a training step, the measured ratio is higher: see ``benchmarks/overhead_autolr.py``.
For iterable ``probe_data`` the two superbatches are held in memory (``2 * superbatch`` mini-batches).
A rollback snapshot kept in memory costs one copy of the parameters and buffers plus one of the
optimizer state (SGD: 0-1x params, momentum SGD: 1x, Adam/AdamW: 2x), held for one window after each
change; ``snapshot="disk"`` writes it with ``torch.save`` to ``snapshot_dir`` instead (no memory, one
write per change and one read per rollback).

Where the parts live
--------------------
* ``rules.py``: the paper's rules as pure functions on floats (the fit's minimum, threshold,
  offsets, next rate, rollback test, saturation monitor); the least-squares fit itself is
  autostep's one parabola fit, ``autostep/_quadratic.py``.
* ``options.py``: argument checks and defaults.
* ``superbatch.py``: drawing superbatches from ``probe_data``.
* ``evaluate.py``: superbatch losses (no-grad forwards, generator replay, buffer restore, ranks).
* ``direction.py``: the wrapped optimizer's next update per unit rate.
* ``probe.py``: one estimate (probe losses along the direction, fit, thresholded decision).
* ``schedule.py``: the explore/exploit windows, saturation, rollback and the decision log.
* ``rates.py``: group ratios, a scheduler's multiplier, refusal of foreign writes to the wrapped ``lr``.
* ``state.py``: the state-dict layout (torch's two keys) and torch's checkpoint-helper init step.
* ``wrapper.py``: :class:`AutoLR`, the ``torch.optim.Optimizer`` that ties the parts together.

Rollback snapshots (model tensors and the wrapped optimizer's state, in memory or on disk) and the
generator snapshots are autostep's one snapshot mechanism, ``autostep/_snapshot.py``.
"""

from . import rules
from .rules import *  # noqa: F401,F403  (the pure rules are part of the public surface)
from .rates import ForeignRateError
from .wrapper import AutoLR

__all__ = ["AutoLR", "ForeignRateError", *rules.__all__]
