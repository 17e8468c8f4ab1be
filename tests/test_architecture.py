"""Layering and basic hygiene, enforced: import-linter contracts (.importlinter) and ruff's bug-class rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_import_contracts_are_kept():
    env = {**os.environ, "PYTHONPATH": f"{ROOT}/operator:{ROOT}/trainer"}
    result = subprocess.run(
        [str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_undefined_names_or_syntax_errors():
    # E9: syntax errors; F63/F7: invalid comparisons and misplaced statements; F82: undefined names.
    result = subprocess.run(
        [
            str(BIN / "ruff"),
            "check",
            "--select",
            "E9,F63,F7,F82",
            "--output-format",
            "concise",
            "operator",
            "trainer",
            "tests",
            "bench",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_folder_is_not_a_package():
    # A top-level operator/__init__.py would shadow the standard library's `operator` module.
    for path in (
        "operator/__init__.py",
        "trainer/__init__.py",
        "operator/kubetune/__init__.py",
        "trainer/kubetune/__init__.py",
    ):
        assert not (ROOT / path).exists(), path
