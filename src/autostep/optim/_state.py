"""Where an autostep optimizer keeps its state, and the record that undoes a failed step.

Where the state lives
    The optimizer-level state ``_ls`` (counters, phase, EMAs, amortize interval; anything that is
    not per-parameter) is a plain dict stored *in the first param group*, under the key
    ``"autostep"`` (:data:`STATE_KEY`), the way Prodigy and schedule-free keep their step-level
    numbers in ``param_groups``.  Per-parameter buffers are in torch's ``state``.  ``state_dict()``
    therefore has only torch's two keys, ``state`` and ``param_groups``, and torch's distributed
    checkpoint helpers (``get_optimizer_state_dict`` / ``set_optimizer_state_dict``, which keep
    exactly those two) round-trip everything.  Every value in it is an int, float, bool, str,
    ``None``, a list of those or a dict of those -- no NaN (``None`` stands for "not computed"), so
    saved groups compare equal to themselves after a checkpoint round trip.

Undoing a step
    :class:`StepUndo` records what a ``step`` may change (the side state, the param groups, the
    per-parameter state dicts, ``.grad``) so that a step that raises -- an exception or a
    ``KeyboardInterrupt`` in a trial, a closure that breaks the contract -- puts all of it back and
    the optimizer is exactly as before the call.

Rule for the code of every step: a tensor held in ``self.state`` is never modified in place before
the step's last fallible call (closure evaluation); new values are computed into fresh tensors and
assigned, or written in place only in the commit part at the end.  Values in ``_ls`` and in the
param groups are replaced, not mutated (lists are copied one level by :class:`StepUndo`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ._optimizer import AutostepOptimizer

__all__ = ["STATE_KEY", "OPTIONAL_LS", "StepUndo", "ls_property"]

#: key of the optimizer-level state in ``param_groups[0]``
STATE_KEY = "autostep"


def _copy1(d: dict) -> dict:
    """Copy of ``d`` with list and dict values copied one level (cheap; enough for our state)."""
    return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for k, v in d.items()}


def _copy_group(g: dict) -> dict:
    """:func:`_copy1` of a param group, with its optimizer-level state dict copied one level too.

    The ``params`` list is kept as it is (no step changes which parameters a group holds), so the
    copy costs the group's few hyper-parameters, not its parameters."""
    out = {k: (v if k == "params" else list(v) if isinstance(v, list)
               else dict(v) if isinstance(v, dict) else v)
           for k, v in g.items()}
    if isinstance(g.get(STATE_KEY), dict):
        out[STATE_KEY] = _copy1(g[STATE_KEY])
    return out


def ls_property(key: str, doc: str) -> property:
    """A read-only property returning ``self._ls[key]``: a counter or mode of the state."""
    return property(lambda self: self._ls[key], doc=doc)


#: side-state counters added by the fault handling; state dicts saved before it lack them
OPTIONAL_LS = ("skipped", "nonfinite", "stalled")


class StepUndo:
    """Everything a step may change, recorded before it starts, put back by :meth:`restore`.

    Parameters themselves are restored by the step's :class:`~autostep._line.Line` (trial points are
    rebuilt from a saved copy); this records the rest: every param group's values (the
    optimizer-level state ``_ls`` in the first one included), the per-parameter state dicts
    (shallow: tensors are referenced, which is enough because steps never modify state tensors in
    place before they commit), each parameter's ``.grad`` object, and ``last_step``.

    What is recorded is what the step can change (issue 13: the record is made every step):

    * ``state=False`` (optimizers whose steps write per-parameter state only in their commit, after
      the last closure call: the Armijo family) records only which parameters have state, so that
      entries a failed step added are removed, instead of copying every parameter's state dict;
    * ``grads=False`` (steps whose :class:`~autostep._closure.ClosureEvaluator` puts the ``.grad``
      fields back itself, on every failure after its start) leaves ``.grad`` alone.
    """

    __slots__ = ("groups", "state", "keys", "grads", "last_step")

    def __init__(self, opt: "AutostepOptimizer", state: bool = True, grads: bool = True) -> None:
        self.groups = [_copy_group(g) for g in opt.param_groups]
        self.state = {p: dict(s) for p, s in opt.state.items()} if state else None
        self.keys = None if state else list(opt.state)
        self.grads = [(p, p.grad) for p in opt._all_params()] if grads else None
        self.last_step = opt.last_step

    def restore(self, opt: "AutostepOptimizer", grads: bool = True) -> None:
        """Put everything back (``grads=False``: all but the ``.grad`` fields)."""
        for group, saved in zip(opt.param_groups, self.groups):
            group.clear()
            group.update(saved)
        if self.state is not None:
            for p in [p for p in opt.state if p not in self.state]:
                del opt.state[p]
            for p, saved in self.state.items():
                st = opt.state[p]
                st.clear()
                st.update(saved)
        elif len(opt.state) != len(self.keys):
            had = set(map(id, self.keys))
            for p in [p for p in opt.state if id(p) not in had]:
                del opt.state[p]
        if grads and self.grads is not None:
            for p, g in self.grads:
                if p.grad is not g:
                    p.grad = g
        opt.last_step = self.last_step
