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


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when the line is emitted, not as it was at :func:`setup`: a stream swapped
    in and closed since (a capture, a redirected console) never turns a log line into a logging error. A stream set
    with ``setStream`` is used until ``setStream`` is given the current ``sys.stderr`` back."""

    def __init__(self) -> None:
        super().__init__()
        self._pinned: object | None = None

    @property  # type: ignore[override]
    def stream(self) -> object:
        pinned = getattr(self, "_pinned", None)
        return pinned if pinned is not None else sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        self._pinned = None if value is sys.stderr else value


def setup(level: str = "INFO") -> None:
    root = logging.getLogger("kubetune")
    if not root.handlers:
        handler = StderrHandler()
        handler.setFormatter(RedactingFormatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level if is_main() else "WARNING")


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("kubetune") else f"kubetune.{name}")
