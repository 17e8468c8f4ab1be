"""Names of the children of a FineTuneJob, derived in one place.

An Indexed Job's pods get the hostname ``<job>-<index>``, a DNS label of at most 63
characters, so the Job name keeps room for ``-<index>`` (up to 4 digits).
"""

from __future__ import annotations

import hashlib
import re

MAX_JOB_NAME = 63 - len("-1023")
CONFIG_FILE = "trainer.json"
CONFIG_DIR = "/etc/kubetune"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"


def _shorten(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[: limit - 7].rstrip('-')}-{digest}"


def job_name(ftj_name: str) -> str:
    """The batch/v1 Job (and its pods' hostnames ``<job>-<index>``)."""
    return _shorten(ftj_name, MAX_JOB_NAME)


def service_name(ftj_name: str) -> str:
    """The headless Service; a DNS-1035 label, so it must start with a letter."""
    base = job_name(ftj_name)
    return base if base[0].isalpha() else _shorten(f"ftj-{base}", MAX_JOB_NAME)


def configmap_name(ftj_name: str) -> str:
    return _shorten(ftj_name, 63 - len("-trainer")) + "-trainer"


def master_addr(ftj_name: str, namespace: str | None = None) -> str:
    """Stable DNS name of the rank-0 pod: ``<job>-0.<service>`` (plus the namespace when known)."""
    addr = f"{job_name(ftj_name)}-0.{service_name(ftj_name)}"
    return f"{addr}.{namespace}.svc" if namespace else addr


def volume_name(prefix: str, name: str) -> str:
    """A pod volume name (a DNS-1123 label: at most 63 of ``[a-z0-9-]``) for the ConfigMap or PVC ``name``, which
    may be a DNS subdomain (dots, up to 253 characters). Names that need changing get a hash of the original, so
    two claims never share a volume."""
    base = f"{prefix}-{name}"
    if len(base) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", base):
        return base
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    clean = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    return f"{clean[: 63 - 9].rstrip('-')}-{digest}"
