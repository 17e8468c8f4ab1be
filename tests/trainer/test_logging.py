"""kubetune's log handler follows sys.stderr: a stream captured at setup and closed since never breaks a log line."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from kubetune.trainer.logging import StderrHandler, get_logger, setup


def test_lines_go_to_the_current_stderr_not_a_closed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger("kubetune")
    monkeypatch.setattr(root, "handlers", [])
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup()
    assert isinstance(root.handlers[0], StderrHandler)
    get_logger("probe").warning("to the first stream")
    first.close()  # a test's capture ends, a console is torn down
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("probe").warning("to the second stream")
    assert second.getvalue().endswith("kubetune.probe: to the second stream\n")
    assert "Logging error" not in second.getvalue()
