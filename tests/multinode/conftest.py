"""Multi-node fixtures: skip (with the reason) only where network namespaces cannot be made."""

from __future__ import annotations

import pytest

from tests.multinode.netns import netns_unavailable


@pytest.fixture(scope="session")
def netns_ok() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
