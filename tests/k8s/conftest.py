"""Tests on a real control plane (tests/harness/realcluster.py): every test here is marked ``k8s``."""

from pathlib import Path

import pytest

from tests.harness.fixtures import operator_passes  # noqa: F401
from tests.harness.realcluster import control_plane, k8s  # noqa: F401
from tests.harness.realkueue import kueue  # noqa: F401

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.k8s)
            item.add_marker(pytest.mark.slow)
