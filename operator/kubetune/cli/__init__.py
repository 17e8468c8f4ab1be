"""The `kubetune` command line.

Subcommands register themselves in :data:`COMMANDS` (name → (help, add_arguments, run)),
so each concern keeps its own module. Trainer-side commands import the trainer lazily:
the operator image (no torch) still has validate, crd, render and operator.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from kubetune.cli import commands

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description="LLM fine-tuning as a Kubernetes-native service (FineTuneJob CRD)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _run) in commands.COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _help, _add, run = commands.COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
