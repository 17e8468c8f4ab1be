"""The `kubetune` command line.

Subcommands register themselves in :data:`kubetune.cli.registry.COMMANDS` (name → (help, add_arguments, run)),
so each concern keeps its own module. Trainer-side commands import the trainer lazily:
the operator image (no torch) still has validate, crd, render and operator.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from kubetune.cli import cluster, commands, data, operator  # noqa: F401 - each registers its subcommands
from kubetune.cli.registry import COMMANDS


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (the usage itself is in --help), exit code 2 as argparse's."""

    def error(self, message: str) -> NoReturn:
        from kubetune.api.checks import clip_text

        self.exit(2, f"{self.prog}: {clip_text(message, 300)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kubetune", description="LLM fine-tuning as a Kubernetes-native service (FineTuneJob CRD).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _help, _add, run = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if os.environ.get("KUBETUNE_DEBUG"):
            raise
        from kubetune.api.checks import clip_text
        from kubetune.api.redact import redact

        print(
            f"kubetune {args.command}: {type(exc).__name__}: {clip_text(redact(exc), 300)} "
            "(a bug: please report it; KUBETUNE_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
