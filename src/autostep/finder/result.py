"""The result of a learning-rate search or range test, and its plot.

:class:`FinderResult` is shared by :func:`autostep.find_lr` (step-sampling search) and
:func:`autostep.range_test` (the classic baselines), so both can be printed, compared and plotted
side by side (:func:`plot_results`).  Plotting imports matplotlib lazily and draws on an Agg canvas
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): the global pyplot backend is never changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

__all__ = ["Trial", "FinderResult", "plot_results"]


class Trial(NamedTuple):
    """One evaluated learning rate.

    ``val_loss`` is the mean over seeds of ``losses`` (``inf`` when any seed diverged);
    ``losses`` holds one value per seed; ``steps`` is the number of training steps actually run
    (all seeds together); ``diverged`` is True when any seed stopped early on a non-finite or
    exploding training loss.  For a range test ramp, each row is one iteration (``val_loss`` is the
    raw training loss of that iteration).
    """

    lr: float
    val_loss: float
    losses: tuple
    steps: int
    diverged: bool


@dataclass
class FinderResult:
    """What a learning-rate search returns.

    Attributes
    ----------
    lr:
        The recommended learning rate (``picks[pick]``).
    window:
        ``(min_lr, max_lr)``, the viable window of the paper's section 3.1 (``None`` for the classic
        range test, which has no such window).
    picks:
        Every rule's learning rate.  Search: ``log_midpoint``, ``half_drop``, ``steepest``.  Range
        test: ``valley``, ``steep``, ``min_div_10``, ``slide``, ``steepest`` (ramp) or ``lowest``
        (reset per rate).
    pick:
        The name of the rule behind ``lr``.
    trials:
        Every :class:`Trial`, in evaluation order.
    spread:
        ``{rule: (low, high)}``: the range of each rule's pick over the seeds (each seed's curve
        analysed on its own); empty with a single seed.  ``picks`` come from the mean curve, which
        is smoother than any single seed's, so a pick can lie slightly outside its seeds' range.
    steps_spent:
        Training steps run in total (all trials, all seeds); the cost to compare with a grid search.
    method:
        ``"step_sampling"``, ``"range_test"`` or ``"reset_per_rate"``.
    curve:
        The analysed curve (:class:`autostep.finder.curve.CurveAnalysis`) for the search; for the
        ramp a dict with ``lrs``, ``raw`` and ``smoothed`` losses.
    info:
        Details: rounds of refinement, edges extended, notes.
    """

    lr: float
    window: Optional[tuple]
    picks: dict
    pick: str
    trials: list
    spread: dict
    steps_spent: int
    method: str
    curve: object = None
    info: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A few human-readable lines: window, picks (with spread), steps spent."""
        lines = [f"{self.method}: lr = {self.lr:.4g} ({self.pick})"]
        if self.window is not None:
            lines.append(f"  window      {self.window[0]:.4g} .. {self.window[1]:.4g}")
        for name, value in self.picks.items():
            extra = ""
            if name in self.spread:
                lo, hi = self.spread[name]
                extra = f"   seeds: {lo:.4g} .. {hi:.4g}"
            lines.append(f"  {name:<13}{value:.4g}{extra}")
        n_eval = len({round(math.log10(t.lr), 9) for t in self.trials if t.lr > 0})
        lines.append(f"  steps spent {self.steps_spent} ({n_eval} learning rates evaluated)")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - formatting only
        return self.summary()

    def plot(self, path: Optional[str] = None, *, title: Optional[str] = None):
        """Draw the log-LR/loss curve, its curvature, the window and the picks (paper Figs. 3-8).

        With ``path`` the figure is saved there (PNG by extension) and the path is returned;
        without it the :class:`matplotlib.figure.Figure` is returned.  Needs matplotlib
        (``pip install autostep[plot]``).
        """
        return plot_results([self], path, titles=None if title is None else [title])

    # ---------------------------------------------------------------------------------------
    def _draw(self, ax_loss, ax_lower, title: Optional[str]) -> None:
        colors = {"log_midpoint": "tab:orange", "half_drop": "tab:blue", "steepest": "tab:green",
                  "valley": "tab:orange", "steep": "tab:blue", "min_div_10": "tab:red",
                  "slide": "tab:purple", "lowest": "tab:red"}
        if self.method == "range_test":
            lrs, raw, sm = self.curve["lrs"], self.curve["raw"], self.curve["smoothed"]
            ax_loss.plot(lrs, raw, color="0.75", lw=0.8, label="raw loss")
            ax_loss.plot(lrs, sm, color="k", lw=1.5, label="smoothed loss")
            grads = [(sm[i + 1] - sm[i]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i]))
                     for i in range(len(lrs) - 1)]
            ax_lower.plot(lrs[:-1], grads, color="k", lw=1)
            ax_lower.set_ylabel("d loss / d log10 lr")
            finite = [v for v in sm if math.isfinite(v)]
            if finite:
                lo, hi = min(finite), max(finite)
                top = min(hi, sm[0] * 1.5) if sm[0] > 0 else hi
                pad = 0.05 * (hi - lo + 1e-12)
                ax_loss.set_ylim(lo - pad, top + pad)
        else:
            c = self.curve
            lrs = c.lrs
            if self.trials and len(self.trials[-1].losses) > 1:
                by_lr = {round(math.log10(t.lr), 9): t for t in self.trials if t.lr > 0}
                for s in range(len(self.trials[-1].losses)):
                    pts = sorted((10 ** k, t.losses[s]) for k, t in by_lr.items()
                                 if math.isfinite(t.losses[s]))
                    ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], ".", color="0.7", ms=3,
                                 label="per seed" if s == 0 else None)
            div = {round(math.log10(t.lr), 9) for t in self.trials if t.diverged and t.lr > 0}
            ok = [i for i, x in enumerate(c.x) if round(x, 9) not in div]
            bad = [i for i, x in enumerate(c.x) if round(x, 9) in div]
            ax_loss.plot([lrs[i] for i in ok], [c.y[i] for i in ok], "o", color="k", ms=3.5,
                         label="trials (mean)")
            if bad:
                ax_loss.plot([lrs[i] for i in bad], [c.y[i] for i in bad], "x", color="tab:red",
                             ms=6, label="diverged (capped)")
            ax_loss.plot(lrs, c.ys, "-", color="k", lw=1, label="fitted")
            ax_lower.plot(lrs, c.k, ".-", color="k", lw=1, ms=3)
            ax_lower.axhline(0, color="0.8", lw=0.8)
            ax_lower.set_ylabel("curvature k")
            if self.window is not None:
                for ax in (ax_loss, ax_lower):
                    ax.axvspan(self.window[0], self.window[1], color="tab:orange", alpha=0.12,
                               label="window" if ax is ax_loss else None)
                ax_lower.axvline(self.window[0], color="tab:orange", ls=":")
        for name, value in self.picks.items():
            col = colors.get(name, "tab:gray")
            ax_loss.axvline(value, color=col, ls="--", lw=1.2, label=f"{name} {value:.3g}")
            if name in self.spread:
                lo, hi = self.spread[name]
                ax_loss.axvspan(lo, hi, ymin=0.0, ymax=0.04, color=col, alpha=0.6)
        for ax in (ax_loss, ax_lower):
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.25)
        ax_loss.set_ylabel("loss")
        ax_lower.set_xlabel("learning rate")
        ax_loss.set_title(title or f"{self.method}: lr = {self.lr:.3g} ({self.pick}), "
                                   f"{self.steps_spent} steps", fontsize=9)
        ax_loss.legend(fontsize=7, loc="best")


def _figure(ncols: int):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Plotting needs matplotlib, which is not installed. Install it with "
            "`pip install matplotlib` (or `pip install autostep[plot]`)."
        ) from exc
    fig = Figure(figsize=(5.5 * ncols, 6.5), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, ncols, sharex="col", squeeze=False,
                        gridspec_kw={"height_ratios": [2, 1]})
    return fig, axes


def plot_results(results: Sequence[FinderResult], path: Optional[str] = None,
                 titles: Optional[Sequence[str]] = None):
    """Plot one or more results side by side (one column each), e.g. a search and a range test.

    Saves to ``path`` and returns it when given, else returns the matplotlib ``Figure``.
    """
    results = list(results)
    if not results or not all(isinstance(r, FinderResult) for r in results):
        raise TypeError("plot_results needs a non-empty list of FinderResult objects, got "
                        f"{[type(r).__name__ for r in results]!r}")
    if titles is not None and len(titles) != len(results):
        raise ValueError(f"got {len(titles)} titles for {len(results)} results")
    fig, axes = _figure(len(results))
    for j, r in enumerate(results):
        r._draw(axes[0][j], axes[1][j], None if titles is None else titles[j])
    if path is None:
        return fig
    fig.savefig(str(path), dpi=110)
    return str(path)
