"""Operator tests use the API emulator, the cluster simulator and the in-process operator."""

from tests.harness.fixtures import cluster, kube_api, operator_passes, start_operator  # noqa: F401
