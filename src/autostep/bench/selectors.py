"""Learning-rate selectors of the benchmark: an LR search before training, within 10% of the run.

``find_lr`` (autostep's step-sampling search, limited with ``budget=``) and ``torch_lr_finder`` (the
classic range test, with torch-lr-finder's ``steepest`` suggestion) each spend at most
:data:`SEARCH_FRACTION` of a run's steps; a budget too small for any search trains at Adam's 1e-3.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

from ..finder.rangetest import rule_steepest
from .streams import probe_batches
from .tasks import Task

__all__ = ["SEARCH_FRACTION", "search_budget", "select_lr"]

#: a selector's search may spend at most this fraction of a run's step budget (issue 9's protocol)
SEARCH_FRACTION = 0.10


def search_budget(steps: int) -> int:
    """Training steps a selector may spend on its search within a run of ``steps`` steps."""
    return int(math.floor(SEARCH_FRACTION * steps))


def select_lr(spec, task: Task, cfg) -> tuple[float, int, str]:
    """Run a selector's LR search within :data:`SEARCH_FRACTION` of the run's budget (``cfg.steps``
    steps; its probe batches come from ``cfg.seed``).

    Returns ``(lr, training steps spent, note)``; the note says how the search was shrunk to fit,
    or is empty when the method's usual search fits.  A budget too small for any search falls back
    to Adam's 1e-3 and says so."""
    kind = spec.options.get("selector")
    model = task.model
    budget = search_budget(cfg.steps)
    if kind == "find_lr":
        from ..finder import NoViableRateError, find_lr

        if budget < 4:  # find_lr needs two trials of two steps
            return 1e-3, 0, (f"no search fits in {budget} steps (10% of {cfg.steps}); "
                             f"trained at Adam's 1e-3")
        # as the finder's calibration runs it: the schedule's peak rate within budget_steps
        train = probe_batches(task, budget, cfg.seed)
        val = probe_batches(task, 4, cfg.seed + 1)
        try:
            res = find_lr(model, lambda p, lr: torch.optim.Adam(p, lr=lr), task.loss_fn, train, val,
                          schedule=spec.schedule, total_steps=cfg.steps, budget=budget, progress=False)
        except NoViableRateError as exc:
            spent = int(exc.result.steps_spent) if getattr(exc, "result", None) is not None else budget
            return 1e-3, spent, f"every trial diverged ({spent} steps); trained at Adam's 1e-3"
        spent = int(res.steps_spent)
        if spent > budget:
            return float(res.lr), spent, f"search overran its budget: {spent} > {budget} steps"
        return float(res.lr), spent, f"search limited to find_lr(budget={budget}), 10% of {cfg.steps} steps"
    if kind == "torch_lr_finder":
        from torch_lr_finder import LRFinder

        class _LossModule(torch.nn.Module):  # the finder calls criterion(model(inputs), labels)
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, batch):
                return task.loss_fn(self.inner, batch)

        num_iter = min(100, budget)
        if num_iter < 5:
            return 1e-3, 0, (f"no range test fits in {budget} steps (10% of {cfg.steps}); "
                             f"trained at Adam's 1e-3")
        note = "" if num_iter == 100 else (
            f"range test shrunk to {num_iter} iterations to fit 10% of {cfg.steps} steps")
        data = [(b, torch.zeros(1)) for b in probe_batches(task, num_iter, cfg.seed)]
        wrapper = _LossModule()
        opt = torch.optim.Adam(model.parameters(), lr=1e-7)
        finder = LRFinder(wrapper, opt, lambda out, _y: out, device=str(task.device))
        loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            finder.range_test(loader, end_lr=10, num_iter=num_iter)
        lrs, losses = finder.history["lr"], finder.history["loss"]
        finder.reset()
        # the recorded losses are already smoothed and cut at divergence by torch-lr-finder
        best = float(rule_steepest(lrs, losses, smooth_f=None, diverge_th=None, skip_start=max(1, num_iter // 10),
                                   skip_end=max(1, num_iter // 20), ends=False))
        return best, num_iter, note
    raise ValueError(f"unknown selector {kind!r}")
