"""Rank-aware logging: trainer code never logs the same line from every rank."""

from __future__ import annotations

import logging
import os
import sys

from kubetune.api.redact import redact

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


class RedactingFormatter(logging.Formatter):
    """Every line, tracebacks included, with URL credentials and signature/token parameters masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup(level: str = "INFO") -> None:
    root = logging.getLogger("kubetune")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level if is_main() else "WARNING")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("kubetune") else f"kubetune.{name}")
