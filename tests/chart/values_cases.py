"""Value sets the chart tests render: the defaults, everything switched on, everything switched off."""

from __future__ import annotations

from typing import Any

DEFAULT: dict[str, Any] = {}

FULL: dict[str, Any] = {
    "replicaCount": 3,
    "watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]},
    "peering": {"name": "kubetune-ha"},
    "image": {"repository": "registry.example.com/kubetune-operator", "digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "regcred"}],
    "trainer": {
        "image": {"repository": "registry.example.com/kubetune-trainer", "tag": "0.1.0-cu124"},
        "gpuResource": "amd.com/gpu",
        "metricsPort": 9500,
    },
    "storage": {"defaultOutputUri": "s3://ml-artifacts/kubetune", "credentialsSecret": "kubetune-s3"},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kubetune"}},
    "crds": {"keep": False},
    "operator": {
        "metricsPort": 9090,
        "healthPort": 9091,
        "syncInterval": 5,
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
    },
    "metrics": {"service": {"annotations": {"prometheus.io/scrape": "true"}}},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "apiServerCIDRs": ["10.0.0.1/32"],
    },
    "podDisruptionBudget": {"enabled": True},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kubetune"}},
        }
    ],
    "podAnnotations": {"example.com/team": "ml"},
    "commonLabels": {"team": "ml-platform"},
}

MINIMAL: dict[str, Any] = {
    "crds": {"enabled": False},
    "rbac": {"create": False},
    "serviceAccount": {"create": False, "name": "existing-operator-sa"},
    "metrics": {"service": {"enabled": False}},
    "monitoring": {"dashboard": {"enabled": False}},
    "livenessProbe": {"enabled": False},
    "readinessProbe": {"enabled": False},
}

CASES = {"default": DEFAULT, "full": FULL, "minimal": MINIMAL}
