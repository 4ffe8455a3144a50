"""The ``autostep`` command line: ``autostep <subcommand> ...``.

Each feature module that offers a subcommand exposes ``register(subparsers)``, which adds its
parser and sets ``func`` (called with the parsed arguments, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: modules that contribute subcommands, in the order they are listed in --help
SUBCOMMAND_MODULES = (
    "autostep.bench.cli",
    "autostep.demo",
    "autostep.cli_lines",
    "autostep.cli_find_lr",
)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``autostep <cmd>: error: ... (see --help)``."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    """Run ``autostep <subcommand>``; returns the exit code.

    Bad input never ends in a traceback: argparse reports malformed arguments (exit 2), and a
    ``ValueError``/``TypeError``/``OSError`` raised by a subcommand (a bad value, an unwritable path,
    missing data) is printed as one line ``autostep <command>: error: <message>`` with exit code 2.
    Set ``AUTOSTEP_TRACEBACK=1`` to see the traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError) as exc:
        if os.environ.get("AUTOSTEP_TRACEBACK"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"autostep {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autostep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
