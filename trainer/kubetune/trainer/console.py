"""What `kubetune run` shows on the terminal: kubetune's own lines, and nothing the libraries print.

Libraries write to the process's stdout and stderr from Python (warnings, transformers' logging,
DeepSpeed's accelerator notice), from C (bitsandbytes' kernel loading) and from the worker processes
they start. :func:`quiet_console` therefore moves file descriptors 1 and 2 into a log file next to the
run, and hands back a stream on the real terminal for kubetune's logger, its live view and its summary.
With ``verbose`` nothing is moved: the terminal shows everything, as before.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from kubetune.trainer.logging import RedactingFormatter

CONSOLE_FORMAT = "kubetune: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def quiet_console(log_path: Path, *, verbose: bool = False) -> Iterator[TextIO]:
    """Yield the terminal stream for kubetune's lines; everything else written to fds 1/2 goes to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    kubetune_log = logging.getLogger("kubetune")
    if verbose:
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        file_handler.setFormatter(RedactingFormatter(FILE_FORMAT, datefmt="%H:%M:%S"))
        kubetune_log.addHandler(file_handler)
        try:
            yield sys.stderr
        finally:
            kubetune_log.removeHandler(file_handler)
            file_handler.close()
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    console = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    previous = [(h, h.level) for h in kubetune_log.handlers]
    handler = logging.StreamHandler(console)
    handler.setFormatter(RedactingFormatter(CONSOLE_FORMAT))
    handler.setLevel(logging.INFO)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # kubetune's logger keeps writing the full lines to the log file (through fd 2) and, shortly, to the terminal
        kubetune_log.addHandler(handler)
        yield console
    finally:
        kubetune_log.removeHandler(handler)
        for h, level in previous:
            h.setLevel(level)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log_fd)
        console.flush()
        console.close()


def quiet_libraries() -> None:
    """Stop the libraries' own progress displays and notices at their source (the pod and `kubetune run`)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover - the trainer extra always has datasets
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
