"""The loss along lines: does the full-batch loss look like a parabola in update directions?

:func:`loss_along_lines` trains the user's model with an optimizer for a number of steps and, at chosen steps, measures
along that step's update direction (the unit vector from ``w_t`` to ``w_{t+1}``; the unit negative
gradient of the batch when the optimizer did not move, e.g. a LABPAL approximation call) the loss
of the direction-defining mini-batch and the full-batch (or a large-batch) training loss on a grid of
step sizes ``s``.  A least-squares parabola is fitted to each; the result holds the measurements,
the mean absolute fit errors, the step to each parabola's minimum and the step the optimizer took;
:func:`plot` draws Figures 1 and 2 (right) of the LABPAL paper from it (or pass ``out=``).  The paper's observation 1 is
that full-batch losses along such lines are fitted by parabolas with a mean absolute error below
``0.6e-2``.

The measurements never change the training run: parameters are restored exactly, random numbers
are replayed (same dropout masks for every grid point) and module buffers are put back.

Command line (on a built-in problem, :mod:`autostep.cli_lines`):
``autostep lines [--optimizer sgd] [--steps 300] [--every 10] [--out lines.png]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from . import _validate as V
from ._batches import chunks, epoch_batches
from ._progress import progress_bar
from ._quadratic import fit_parabola
from ._snapshot import ModelState, RNGSnapshot
from .optim import _parabola as P

__all__ = ["loss_along_lines", "plot", "LineRecord", "LinesResult", "OBSERVATION_1_THRESHOLD"]

#: observation 1 of the LABPAL paper: mean absolute distance of the parabola fits below 0.6e-2
OBSERVATION_1_THRESHOLD = 0.6e-2


@dataclass
class LineRecord:
    step: int  # training step t (0-based) whose update direction is measured
    direction: str  # "update" or "gradient" (the optimizer did not move)
    grad_norm: float  # ||g|| of the direction-defining batch at w_t
    step_taken: float  # ||w_t - w_{t+1}||
    grid: list
    batch_losses: list
    full_losses: list
    fit_full: tuple  # (a, b, c) least squares
    fit_batch: tuple
    err_full: float  # mean absolute distance of the full-batch losses to their parabola
    err_batch: float
    s_min_full: float  # minimum of the full-batch parabola (nan if it opens downwards)
    s_min_batch: float
    s_best_full: float  # grid point with the lowest measured full-batch loss


@dataclass
class LinesResult:
    records: list = field(default_factory=list)
    mean_abs_fit_error: float = math.nan  # full-batch, over all records
    mean_abs_fit_error_batch: float = math.nan
    mean_relative_fit_error: float = math.nan  # error / (max - min loss on the grid)
    observation_1: bool = False  # mean_abs_fit_error < OBSERVATION_1_THRESHOLD
    png: Optional[str] = None
    train_losses: list = field(default_factory=list)

    def table(self) -> str:
        rows = ["  step  dir      |g|   taken  s_min(full)  s_min(batch)  best(grid)  err_full  err_batch"]
        for r in self.records:
            rows.append(f"{r.step:6d}  {r.direction[:3]}  {r.grad_norm:7.4f} {r.step_taken:7.4f}"
                        f"  {r.s_min_full:11.4f}  {r.s_min_batch:12.4f}  {r.s_best_full:10.3f}"
                        f"  {r.err_full:8.5f}  {r.err_batch:9.5f}")
        return "\n".join(rows)

    def summary(self) -> str:
        if not self.records:
            return ("no line was measured (no measured step moved the weights or had a non-zero "
                    "gradient); observation 1 cannot be checked")
        verdict = "holds" if self.observation_1 else "does not hold"
        return (f"mean absolute parabola fit error (full-batch loss): {self.mean_abs_fit_error:.5f} "
                f"(relative to the loss range on the grid: {self.mean_relative_fit_error:.4f}); "
                f"mini-batch: {self.mean_abs_fit_error_batch:.5f}\n"
                f"observation 1 (full-batch fit error < {OBSERVATION_1_THRESHOLD:g}) {verdict} "
                f"on these {len(self.records)} lines")


def _make_optimizer(optimizer, params, lr: Optional[float], total_steps: int):
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer(params)
    name = str(optimizer).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1 if lr is None else lr)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=0.1 if lr is None else lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3 if lr is None else lr)
    if name == "pal":
        from .optim.pal import PAL
        return PAL(params)
    if name in ("labpal", "labpal-sgd", "labpal-nsgd"):
        from .optim.labpal import LABPAL
        return LABPAL(params, mode="nsgd" if name.endswith("nsgd") else "sgd",
                      total_steps=total_steps)
    raise ValueError(f"optimizer must be sgd, sgd-momentum, adam, pal, labpal-sgd, labpal-nsgd or a "
                     f"factory, got {optimizer!r}")


def _check_args(model, loss_fn, train, lr, steps, every, batch_size, large_batch, at) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (model, (x, y)) -> scalar loss, got "
                        f"{type(loss_fn).__name__}")
    if (not isinstance(train, (tuple, list)) or len(train) != 2
            or not all(isinstance(t, torch.Tensor) for t in train) or len(train[0]) != len(train[1])
            or len(train[0]) == 0):
        raise TypeError("train must be a pair of tensors (x, y) with the same, non-zero number of "
                        f"rows, got {type(train).__name__}")
    V.not_meta(model.parameters(), "lines")
    V.positive_int("steps", steps)
    V.positive_int("every", every)
    V.positive_int("batch_size", batch_size)
    if large_batch is not None:
        V.positive_int("large_batch", large_batch)
    if lr is not None:
        V.positive("lr", lr, " (or None for the optimizer's default)")
    if at is not None and any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < steps
                              for t in at):
        raise ValueError(f"at must list training steps in 0..{steps - 1}, got {list(at)!r}")


@torch.no_grad()
def _loss_on(model, loss_fn, data, chunk: int = 4096) -> float:
    total, n = 0.0, 0
    for xb, yb, m in chunks(data, chunk):
        total += float(loss_fn(model, (xb, yb))) * m
        n += m
    return total / n


def loss_along_lines(model: nn.Module,
                     loss_fn: Callable,
                     train: tuple,
                     *,
                     optimizer: Union[str, Callable] = "sgd",
                     lr: Optional[float] = None,
                     steps: int = 300,
                     at: Optional[Sequence[int]] = None,
                     every: int = 10,
                     batch_size: int = 64,
                     grid: Optional[Sequence[float]] = None,
                     large_batch: Optional[int] = None,
                     seed: int = 0,
                     out: Optional[str] = None,
                     batches=None,
                     progress: Optional[bool] = None) -> LinesResult:
    """Measure the loss along update directions during training (see the module docstring).

    Parameters
        model, loss_fn, train: the model, ``loss_fn(model, (x, y)) -> scalar tensor`` and the
            training tensors ``(x, y)`` (the "full-batch" loss is taken over them).
        optimizer ("sgd"): ``"sgd"`` (plain SGD, lr 0.1), ``"sgd-momentum"`` (SGD with momentum
            0.9, lr 0.1; the names mean the same in ``autostep find-lr``), ``"adam"`` (lr 1e-3), ``"pal"``,
            ``"labpal-sgd"``, ``"labpal-nsgd"``, or a factory ``params -> optimizer``.
            Closure-based autostep optimizers get ``step(closure)``; others the usual
            zero_grad/backward/step.
        lr (None): learning rate of ``"sgd"``/``"sgd-momentum"``/``"adam"`` (a positive number).
        steps (300): training steps; at (None): steps to measure, default ``0, every, 2 every..``.
        batch_size (64): mini-batch size (batches are drawn by seeded epochs of permutations).
        grid (None): step sizes ``s`` on the unit line, default 41 points in ``[-0.5, 0.5]`` (the
            paper's range).
        large_batch (None): size of the large batch for the "full-batch" loss (a fixed seeded
            subset of the training set); ``None`` uses the whole training set.
        out (None): where to save the PNG (needs matplotlib); ``None``: no file is written, call
            :func:`plot` on the result when you want one.
        batches (None): an iterable of ``(x, y)`` batches to train on instead of drawing them.
        progress (None): a progress bar over the training steps (``None``: when stderr is a
            terminal; needs tqdm).

    Raises ``ValueError``/``TypeError`` naming the bad argument before any training step.
    """
    _check_args(model, loss_fn, train, lr, steps, every, batch_size, large_batch, at)
    grid = [(-0.5 + i / 40) for i in range(41)] if grid is None else [float(s) for s in grid]
    if len(grid) < 3 or not all(math.isfinite(s) for s in grid) or len(set(grid)) < 3:
        raise ValueError(f"grid needs at least three distinct finite step sizes, got {grid!r}")
    if out is not None:
        from ._outputs import check_output_file
        check_output_file(out, "out")
    at = set(range(0, steps, max(1, every)) if at is None else at)
    x, y = train
    if large_batch is not None and large_batch < len(x):
        g = torch.Generator().manual_seed(seed + 1)
        idx = torch.randperm(len(x), generator=g)[:large_batch]
        full = (x[idx], y[idx])
    else:
        full = (x, y)
    if batches is None:
        batches = epoch_batches((x, y), steps, batch_size, torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr, steps)
    closure_based = hasattr(opt, "last_step")
    result = LinesResult()
    bar = progress_bar(progress, steps, "lines")
    for t, batch in enumerate(batches):
        if t >= steps:
            break
        if bar is not None:
            bar.update(1)
        measure = t in at
        if measure:
            w_t = [p.detach().clone() for p in params]
            rng, at_w_t = RNGSnapshot(), ModelState(model)
            for p in params:
                p.grad = None
            with torch.enable_grad():
                loss = loss_fn(model, batch)
            loss.backward()
            at_w_t.restore(params=False)   # the buffers (BatchNorm statistics) the forward changed
            rng.restore()
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
            grad_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
            for p in params:
                p.grad = None

        def closure():
            return loss_fn(model, batch)

        if closure_based:
            loss = opt.step(closure)
        else:
            opt.zero_grad()
            loss = closure()
            loss.backward()
            opt.step()
        result.train_losses.append(float(loss.detach()))
        if not measure:
            continue
        after, at_w_next = RNGSnapshot(), ModelState(model)
        delta = [a - p.detach() for a, p in zip(w_t, params)]
        taken = math.sqrt(sum(float(d.pow(2).sum()) for d in delta))
        if taken > 0:
            unit, kind = [d / taken for d in delta], "update"
        elif grad_norm > 0:
            unit, kind = [g / grad_norm for g in grads], "gradient"
        else:
            continue
        b_losses, f_losses = [], []
        with torch.no_grad():
            for s in grid:
                for p, w0, u in zip(params, w_t, unit):
                    p.copy_(w0).add_(u, alpha=-s)
                rng.restore()
                b_losses.append(float(loss_fn(model, batch)))
                at_w_next.restore(params=False)
                rng.restore()
                f_losses.append(_loss_on(model, loss_fn, full))
                at_w_next.restore(params=False)
        at_w_next.restore()   # back to w_{t+1}, where training goes on
        after.restore()
        fit_f = fit_parabola(grid, f_losses) or (math.nan,) * 3
        fit_b = fit_parabola(grid, b_losses) or (math.nan,) * 3
        s_f = P.line_min(fit_f[0], fit_f[1])
        s_b = P.line_min(fit_b[0], fit_b[1])
        best = grid[min(range(len(grid)), key=lambda i: f_losses[i])]
        result.records.append(LineRecord(
            step=t, direction=kind, grad_norm=grad_norm, step_taken=taken, grid=list(grid),
            batch_losses=b_losses, full_losses=f_losses, fit_full=fit_f, fit_batch=fit_b,
            err_full=P.fit_error(grid, f_losses, fit_f), err_batch=P.fit_error(grid, b_losses, fit_b),
            s_min_full=math.nan if s_f is None else s_f, s_min_batch=math.nan if s_b is None else s_b,
            s_best_full=best))
    if bar is not None:
        bar.close()
    if result.records:
        recs = result.records
        result.mean_abs_fit_error = sum(r.err_full for r in recs) / len(recs)
        result.mean_abs_fit_error_batch = sum(r.err_batch for r in recs) / len(recs)
        result.mean_relative_fit_error = sum(
            r.err_full / max(max(r.full_losses) - min(r.full_losses), 1e-12) for r in recs) / len(recs)
        result.observation_1 = result.mean_abs_fit_error < OBSERVATION_1_THRESHOLD
    if out is not None and result.records:
        result.png = plot(result, out)
    return result


def plot(result: LinesResult, out: Optional[str] = None, max_lines: int = 4):
    """Figure 1 (losses along lines) and Figure 2 right (s_min vs ||g||) side by side.

    Saves to ``out`` and returns the path when given, else returns the matplotlib ``Figure``.
    Draws on its own Agg canvas: the user's pyplot backend and figures are never touched.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib import rcParams
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("autostep.lines needs matplotlib for the PNG: pip install matplotlib "
                          "(or pass out=None)") from exc
    recs = result.records
    if not recs:
        raise ValueError("the result has no measured line to plot")
    pick = sorted({recs[round(i * (len(recs) - 1) / max(1, max_lines - 1))].step
                   for i in range(min(max_lines, len(recs)))})
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    for i, r in enumerate(r for r in recs if r.step in pick):
        col = colors[i % len(colors)]
        ax1.plot(r.grid, r.full_losses, "-", color=col, lw=2, label=f"step {r.step}: full batch")
        ax1.plot(r.grid, r.batch_losses, "--", color=col, lw=1, label=f"step {r.step}: mini-batch")
        a, b, c = r.fit_full
        ax1.plot(r.grid, [P.evaluate(a, b, c, s) for s in r.grid], ":", color="k", lw=1)
        ax1.axvline(r.step_taken, color=col, lw=0.8, alpha=0.6)
    ax1.set_xlabel("step s on the unit line (vertical: step taken)")
    ax1.set_ylabel("loss")
    ax1.set_title("Loss along update directions (dotted: parabola fit)")
    ax1.legend(fontsize=7)
    g = [r.grad_norm for r in recs]
    ax2.scatter(g, [r.s_min_full for r in recs], s=14, label="s_min of the full-batch parabola")
    ax2.scatter(g, [r.step_taken for r in recs], s=14, marker="x", label="step the optimizer took")
    ax2.set_xlabel("||g|| of the direction-defining batch")
    ax2.set_ylabel("step size on the line")
    ax2.set_title(f"Optimal step vs gradient norm (mean fit error {result.mean_abs_fit_error:.4f})")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    if out is None:
        return fig
    fig.savefig(out, dpi=110)
    return out


def __getattr__(name: str):
    # ``autostep.lines.lines`` was the function's name before it was renamed (it clashed with
    # the module's): keep old code working, with a warning.
    if name == "lines":
        import warnings
        warnings.warn("autostep.lines.lines is now autostep.lines.loss_along_lines (also "
                      "autostep.loss_along_lines); the old name will be removed",
                      DeprecationWarning, stacklevel=2)
        return loss_along_lines
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
