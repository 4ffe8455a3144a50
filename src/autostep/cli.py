"""The ``autostep`` command line: ``autostep <subcommand> ...``.

Each feature module that offers a subcommand exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: modules that contribute subcommands, in the order they are listed in --help
SUBCOMMAND_MODULES = (
    "autostep.bench.cli",
    "autostep.demo",
    "autostep.lines",
    "autostep.finder.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autostep", description="Learning-rate-free training for PyTorch: demos and diagnostics."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a feature that is not part of this version
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
