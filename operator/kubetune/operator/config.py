"""kopf settings of the kubetune operator (finalizer, storages, posting, watching)."""

from __future__ import annotations

import logging
import random

import kopf

from kubetune.api.v1alpha1 import GROUP
from kubetune.operator.manifests.labels import COMPONENT_LABEL, FINETUNEJOB_LABEL, TRAINER
from kubetune.operator.settings import OperatorSettings

FINALIZER = f"{GROUP}/finalizer"


def configure(settings: kopf.OperatorSettings, op: OperatorSettings) -> None:
    # kopf pauses every replica when the highest priority is shared, so each replica draws its own.
    settings.peering.priority = (
        op.peering_priority if op.peering_priority is not None else random.randint(1, 1_000_000)
    )
    # Our own keys on the object, not kopf's defaults, so several kopf operators never collide.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Events are posted explicitly (phase changes, rejections); log lines stay logs.
    settings.posting.level = logging.ERROR
    # Re-list periodically even if the API server keeps a watch open for long.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = op.api_timeout
    settings.networking.connect_timeout = min(5.0, op.api_timeout)
    # Server-side label selectors: only kubetune's children are watched (a handler's labels= filter is applied
    # by kopf on the client side, after the whole cluster's Pods and Jobs have been sent).
    for resource, selector in WATCHED_CHILDREN.items():
        settings.watching.label_selectors[resource] = selector


WATCHED_CHILDREN: dict[tuple[str, str] | tuple[str, str, str], str] = {  # kopf selector -> label selector
    ("batch", "v1", "jobs"): FINETUNEJOB_LABEL,
    ("v1", "pods"): f"{FINETUNEJOB_LABEL},{COMPONENT_LABEL}={TRAINER}",
}
