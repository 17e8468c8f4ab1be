"""The headless Service: stable DNS for rank 0 (rendezvous) and the metrics port."""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.operator.manifests.labels import RENDEZVOUS, labels, selector
from kubetune.operator.manifests.names import service_name
from kubetune.operator.manifests.options import MASTER_PORT, BuildOptions


def build_service(job: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(name),
            "namespace": job.metadata.namespace,
            "labels": labels(name, RENDEZVOUS),
        },
        "spec": {
            "clusterIP": "None",
            # Rank 0 must be resolvable before it is Ready: workers dial it while it starts.
            "publishNotReadyAddresses": True,
            "selector": selector(name),
            "ports": [
                {"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": options.metrics_port,
                    "targetPort": options.metrics_port,
                    "protocol": "TCP",
                },
            ],
        },
    }
