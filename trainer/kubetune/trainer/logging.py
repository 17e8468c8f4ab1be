"""Rank-aware logging: trainer code never logs the same line from every rank."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(level: str = "INFO") -> None:
    root = logging.getLogger("kubetune")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level if is_main() else "WARNING")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("kubetune") else f"kubetune.{name}")
