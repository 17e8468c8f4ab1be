"""CLI tests: the cluster commands use the API emulator, the cluster simulator and the in-process operator."""

from tests.harness.fixtures import cluster, kube_api, start_operator  # noqa: F401
