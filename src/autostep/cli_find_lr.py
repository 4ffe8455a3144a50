"""``autostep find-lr``: run the step-sampling LR search (:mod:`autostep.finder`) on a built-in problem
and plot it.

The command-line face lives here, beside :mod:`autostep.cli` and :mod:`autostep.cli_lines`, so that
the library function :func:`autostep.find_lr` only ever sees the user's model and never imports the
demo problems.
"""

from __future__ import annotations

import argparse
import os
import sys
from ._argtypes import positive_float, positive_int

__all__ = ["register", "run"]

#: the optimizers the command offers; the names say what they are (``autostep lines`` uses the same)
_OPTIMIZERS = {
    "adam": "torch.optim.Adam",
    "sgd": "torch.optim.SGD, plain (no momentum)",
    "sgd-momentum": "torch.optim.SGD with momentum 0.9",
}


def make_optimizer(name: str):
    """``(params, lr) -> optimizer`` for a CLI optimizer name (one of :data:`_OPTIMIZERS`)."""
    import torch

    if name == "adam":
        return lambda params, lr: torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return lambda params, lr: torch.optim.SGD(params, lr=lr)
    if name == "sgd-momentum":
        return lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {name!r}")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``find-lr`` subcommand to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "find-lr",
        help="search the learning rate by step sampling on a built-in problem",
        description="Train a few steps at many learning rates from the same start (model, data and "
                    "randomness reset per trial), read the viable window and the three picks of "
                    "the step-sampling paper from the log-LR/loss curve, and save its plot.",
    )
    p.add_argument("--problem", choices=("digits", "fmnist"), default="digits",
                   help="digits: scikit-learn digits MLP (always available); fmnist: Fashion-MNIST "
                        "MLP (needs /usr/share/datasets/fashion-mnist)")
    p.add_argument("--optimizer", choices=sorted(_OPTIMIZERS), default="adam",
                   help="; ".join(f"{k}: {v}" for k, v in _OPTIMIZERS.items()) + " (default adam)")
    p.add_argument("--steps", type=positive_int, default=20, help="training steps per trial (20)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="repetitions of each trial with different data orders (spread of the picks)")
    p.add_argument("--lr-min", type=positive_float, default=1e-5, help="start of the coarse grid")
    p.add_argument("--lr-max", type=positive_float, default=1.0, help="end of the coarse grid")
    p.add_argument("--tol", type=positive_float, default=0.125,
                   help="refine until each point of interest is known within TOL decades")
    p.add_argument("--pick", choices=("log_midpoint", "half_drop", "steepest"), default="log_midpoint")
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default=None,
                   help="return the peak rate for training with this schedule (warm-up + cosine, "
                        "warm-up + linear decay, constant) instead of the paper's pick")
    p.add_argument("--total-steps", type=positive_int, default=None,
                   help="length of the training run; the search then takes at most 10%% of it")
    p.add_argument("--budget-steps", type=positive_int, default=None,
                   help="most training steps all trials together may take")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="processes running trials in parallel (1: sequential)")
    p.add_argument("--seed", type=int, default=0, help="model initialisation and data order seed")
    p.add_argument("--out", default=None,
                   help="where to save the plot (default: find_lr_<problem>_<optimizer>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not save a plot")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def _problem(name: str, seed: int):
    from .bench.tasks import DataMissing, demo_task

    try:
        return demo_task(name, seed)
    except DataMissing:
        return None


def run(args) -> int:
    """Entry point of ``autostep find-lr`` (returns the exit code)."""
    import torch

    from ._outputs import check_output_file
    from .finder import find_lr

    if not args.lr_max > args.lr_min:
        print(f"find-lr: --lr-max ({args.lr_max}) must be larger than --lr-min ({args.lr_min})",
              file=sys.stderr)
        return 2
    if args.optimizer == "sgd":
        print("find-lr: note: --optimizer sgd is plain SGD, as in `autostep lines`; up to autostep "
              "0.1.0 it meant SGD with momentum 0.9 here, which is now --optimizer sgd-momentum",
              file=sys.stderr)
    path = None
    if not args.no_plot:  # checked before the search: a bad --out costs nothing
        path = check_output_file(args.out or f"find_lr_{args.problem}_{args.optimizer}.png", "--out")
    problem = _problem(args.problem, args.seed)
    if problem is None:
        print("find-lr: Fashion-MNIST is not installed (looked in /usr/share/datasets/fashion-mnist);"
              " install it with `apt-get install dataset-fashion-mnist` or use --problem digits",
              file=sys.stderr)
        return 1
    train = problem.batch_list(max(args.steps, 1), seed=args.seed)
    xv, yv = problem.val
    val = [(xv[i:i + 1024], yv[i:i + 1024]) for i in range(0, len(xv), 1024)]
    torch.manual_seed(args.seed)
    result = find_lr(problem.model, make_optimizer(args.optimizer), problem.loss_fn, train, val,
                     steps=args.steps, lr_range=(args.lr_min, args.lr_max), tol=args.tol,
                     pick=args.pick, seeds=None if args.seeds == 1 else args.seeds,
                     executor=None if args.workers == 1 else "process", workers=args.workers,
                     progress=False if args.no_progress else None, schedule=args.schedule,
                     total_steps=args.total_steps, budget=args.budget_steps)
    print(f"problem     {problem.name} ({args.optimizer}, {args.steps} steps per trial, "
          f"{args.seeds} seed{'s' if args.seeds > 1 else ''})")
    lo, hi = result.window
    print(f"window      {lo:.4g} .. {hi:.4g}")
    if args.schedule is not None:
        print(f"peak        {result.lr:.4g} for {args.schedule} (best trial rate "
              f"{result.picks['best']:.4g} x {result.info['scale']:.3g}; "
              f"{result.info['trial_steps']} steps per trial, each running the schedule)")
    for name, value in result.picks.items():
        mark = " <- lr" if name == result.pick else ""
        if name in result.spread:
            s_lo, s_hi = result.spread[name]
            print(f"{name:<13}{value:.4g}   spread over seeds {s_lo:.4g} .. {s_hi:.4g}{mark}")
        else:
            print(f"{name:<13}{value:.4g}   (one seed: use --seeds N for a spread){mark}")
    n_lrs = len({t.lr for t in result.trials})
    print(f"steps spent {result.steps_spent} ({n_lrs} learning rates, "
          f"{result.info['rounds']} refinement rounds)")
    if path is not None:
        try:
            result.plot(path, title=f"{problem.name}, {args.optimizer}: lr = {result.lr:.3g}")
        except ImportError as exc:
            print(f"plot        not saved: {exc}", file=sys.stderr)
        else:
            print(f"plot        {os.path.abspath(path)}")
    return 0
