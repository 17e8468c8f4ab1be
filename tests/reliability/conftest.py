"""Reliability suites use the same API emulator, cluster simulator and in-process operator as tests/operator."""

from tests.harness.fixtures import cluster, kube_api, operator_passes, start_operator  # noqa: F401
