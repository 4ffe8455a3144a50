"""Docstring sections that several optimizers share (appended to their class docstrings)."""

__all__ = ["ARMIJO_DOC", "PARABOLIC_DOC"]

#: docstring sections shared by the Armijo family (closure, failure, schedulers, param groups)
ARMIJO_DOC = """
    Closure contract
        ``step(closure)``: the closure computes and returns the mini-batch loss as a scalar tensor; it
        must not call ``backward()`` or ``zero_grad()``.  The optimizer calls it once with grad
        enabled, clears the old gradients and back-propagates, then once per trial point under
        ``torch.no_grad()``, replaying the same random numbers (dropout masks) and restoring module
        buffers (BatchNorm statistics) after each trial.  ``step`` returns the start-point loss.

    Safe failure
        At most ``max_trials`` trial forwards per step; a non-finite trial loss is a rejection.  When
        every trial fails the parameters are restored and the step is **skipped** (counted in
        ``skipped_steps``), and the step size stays at the smallest size tested (never below
        ``min_lr``).  A NaN/inf start loss or gradient (mixed precision produces them) skips the
        step before anything changes: parameters, moments, step counters, EMAs and step sizes stay
        as they were; it counts in ``skipped_steps`` and ``nonfinite_steps`` and warns.  A step
        that raises (an exception or ``KeyboardInterrupt`` in the closure, a broken closure
        contract) leaves the optimizer, ``.grad``, module buffers and the random generators exactly
        as before the call, so retrying it continues bit-for-bit -- except that the gradients the
        previous step left (the optimizer's own backward's or a torch-style closure's), unchanged
        since, are released before the forward (one gradient of memory), so a failed step leaves
        ``.grad`` ``None`` there.  A NaN/inf/non-positive ``lr``
        written between steps is refused at the next step.  A zero search direction costs no trial
        forward.

    Step size and schedulers
        ``param_groups[i]["lr"]`` holds the step size applied by the last step.  A value written
        there from outside between steps (a torch LR scheduler, or you) is a **cap**: it holds until
        the next write, and each search starts from ``min(its own grown step size, cap)`` -- it is
        never restarted from the cap.  A step accepted at the cap leaves the search's own step size
        (``param_groups[i]["step_size"]``) as it was; a backtrack below the cap lowers it.  So a
        closed-form schedule (``LambdaLR``, the Hugging Face linear/cosine schedules, warm-up
        included) is an upper envelope that the step follows once it falls below the searched size,
        at about one trial per step, and chainable schedulers (``ExponentialLR``, ``StepLR``) shrink
        the applied step from one write to the next.  Amortised steps reuse ``min(step size, cap)``.

    Gradients computed outside ``step()``
        With a torch-style closure the gradients it leaves are used (gradient accumulation,
        clipping in the closure).  Gradients already in ``.grad`` that this optimizer's own last
        backward did not produce (a backward of yours, accelerate's ``accumulate()``) are used as
        they are with a loss-only closure too, which then only measures the loss.  Loops that call
        ``optimizer.step()`` without an argument (the Hugging Face Trainer, accelerate) bind a
        loss-only closure with :meth:`set_closure`.

    Mixed precision
        bf16 autocast needs nothing.  fp16 with a ``torch.amp.GradScaler``:
        ``opt.step(closure, grad_scaler=scaler); scaler.update()`` -- the closure returns the
        *unscaled* loss (the search compares unscaled losses), the optimizer scales its backward,
        unscales the gradients, and skips a step with an inf/NaN gradient before any state
        changes.  When ``backward()`` runs outside ``step()`` (bound closure), the stock
        ``scaler.step(opt); scaler.update()`` works.

    Param groups
        Every group has its own step size and Armijo constant; one joint search scales all groups'
        step sizes (each by its own ``backtrack``) until
        ``f(w) - f(w - sum_j eta_j d_j) >= sum_j c_j eta_j s_j``.  With one group this is exactly
        the paper's condition.  ``max_trials`` is shared by all groups.  Parameters whose ``grad``
        is ``None`` are left out of the step.
"""


#: docstring sections shared by PAL and LABPAL (closure contract, faults)
PARABOLIC_DOC = """
    Closure contract
        ``step(closure)``: the closure computes and returns the mini-batch loss as a scalar tensor; it
        must not call ``backward()`` or ``zero_grad()``.  The optimizer calls it with grad enabled
        and back-propagates itself (or, where a call only measures, once under ``torch.no_grad()``),
        then once per trial point under ``torch.no_grad()``, replaying the same random numbers
        (dropout masks) and restoring module buffers (BatchNorm statistics) after each trial, so only
        the first evaluation of a call changes buffers.  ``step`` returns the loss at the start point
        of the call (detached).

    Faults
        A NaN/inf start loss or gradient skips the call before anything changes (counted in
        ``skipped_steps`` and ``nonfinite_steps``, with a ``RuntimeWarning``).  A call that raises
        (an exception or ``KeyboardInterrupt`` in the closure) leaves the optimizer, ``.grad``,
        module buffers and the random generators as they were before it -- except that the
        gradients the previous call left, unchanged since, are released before the forward (one
        gradient of memory), so such a call leaves ``.grad`` ``None`` there.
"""
