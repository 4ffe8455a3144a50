"""``autostep lines``: the loss-along-lines diagnostic (:mod:`autostep.lines`) on a built-in problem.

The command-line face lives here, beside :mod:`autostep.cli`, so that the library function
:func:`autostep.lines.loss_along_lines` only ever sees the user's model and never imports the demo
problems.
"""

from __future__ import annotations

import argparse
import math
from ._argtypes import positive_float, positive_int

__all__ = ["register"]


def _grid_arg(text: str) -> list:
    parts = text.split(",")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        if len(parts) != 3:
            raise ValueError
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected LO,HI,N (e.g. -0.5,0.5,41), got {text!r}") from None
    if n < 3 or not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise argparse.ArgumentTypeError(f"expected finite LO < HI and N >= 3, got {text!r}")
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def register(subparsers) -> None:
    """Add the ``lines`` subcommand to an ``argparse`` subparsers object."""
    from . import lines as L

    p = subparsers.add_parser(
        "lines", help="loss along update directions: is the full-batch loss a parabola there?",
        description=L.__doc__.split("\n\n")[0])
    p.add_argument("--problem", choices=("digits", "fmnist", "fashion"), default="digits",
                   help="digits (default) or fmnist (alias: fashion; needs dataset-fashion-mnist)")
    p.add_argument("--optimizer", default="sgd",
                   choices=("sgd", "sgd-momentum", "adam", "pal", "labpal", "labpal-sgd",
                            "labpal-nsgd"),
                   help="sgd (plain SGD, default), sgd-momentum (momentum 0.9), adam, pal, "
                        "labpal-sgd, labpal-nsgd")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate of sgd/sgd-momentum/adam")
    p.add_argument("--steps", type=positive_int, default=300)
    p.add_argument("--every", type=positive_int, default=10, help="measure every N steps")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--grid", type=_grid_arg, default=None, metavar="LO,HI,N",
                   help="step sizes on the unit line (default -0.5,0.5,41, the paper's range)")
    p.add_argument("--large-batch", type=positive_int, default=None,
                   help="samples for the 'full-batch' loss (default: the whole training set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lines.png", help="PNG path ('' for none)")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from ._outputs import check_output_file
    from .lines import loss_along_lines
    from .bench.tasks import DataMissing, demo_task

    out = args.out or None
    if out is not None:
        check_output_file(out, "--out")  # before training: a bad path costs nothing
    try:
        pb = demo_task("fmnist" if args.problem == "fashion" else args.problem, args.seed)
    except DataMissing:
        raise ValueError("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
                         "; use --problem digits") from None
    res = loss_along_lines(pb.model, pb.loss_fn, pb.train, optimizer=args.optimizer, lr=args.lr,
                           steps=args.steps, every=args.every, batch_size=args.batch_size,
                           grid=args.grid, large_batch=args.large_batch, seed=args.seed, out=out)
    print(res.table())
    print(res.summary())
    if res.png:
        print(f"saved {res.png}")
    return 0
