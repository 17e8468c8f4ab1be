"""kopf settings of the kubetune operator (finalizer, storages, posting, watching)."""

from __future__ import annotations

import logging

import kopf

from kubetune.api.v1alpha1 import GROUP

FINALIZER = f"{GROUP}/finalizer"


def configure(settings: kopf.OperatorSettings) -> None:
    # Our own keys on the object, not kopf's defaults, so several kopf operators never collide.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    # Events are posted explicitly (phase changes, rejections); log lines stay logs.
    settings.posting.level = logging.ERROR
    # Re-list periodically even if the API server keeps a watch open for long.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
