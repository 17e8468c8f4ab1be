"""The subcommand registry the command modules fill and `kubetune.cli` reads (no command imports another)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
Command = tuple[str, AddArguments, Run]
COMMANDS: dict[str, Command] = {}


def command(name: str, help_text: str, add_arguments: AddArguments) -> Callable[[Run], Run]:
    """Register ``run`` as subcommand ``name``."""

    def register(run: Run) -> Run:
        COMMANDS[name] = (help_text, add_arguments, run)
        return run

    return register


def print_error(msg: str) -> None:
    print(msg, file=sys.stderr)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubetune"
