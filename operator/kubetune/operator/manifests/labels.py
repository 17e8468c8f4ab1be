"""Labels of every child: ``app.kubernetes.io/*`` plus ``kubetune.io/finetunejob``."""

from __future__ import annotations

FINETUNEJOB_LABEL = "kubetune.io/finetunejob"
COMPONENT_LABEL = "app.kubernetes.io/component"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
SPEC_HASH_ANNOTATION = "kubetune.io/spec-hash"
MANAGED_BY = "kubetune-operator"

TRAINER = "trainer"
RENDEZVOUS = "rendezvous"
CONFIG = "trainer-config"


def labels(ftj_name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": ftj_name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "kubetune",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        FINETUNEJOB_LABEL: ftj_name,
    }


def selector(ftj_name: str) -> dict[str, str]:
    """Selects the training pods of one FineTuneJob."""
    return {FINETUNEJOB_LABEL: ftj_name, COMPONENT_LABEL: TRAINER}


def selector_string(sel: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
