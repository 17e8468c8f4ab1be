"""Fetch ``configmap://name/key``: the key of the ConfigMap the Job builder mounts.

The mount point is ``kubetune.api.trainer_config.CONFIGMAP_ROOT/<name>`` (``/mnt/configmap``): one constant
for both sides.
"""

from __future__ import annotations

from pathlib import Path

from kubetune.api import trainer_config
from kubetune.api.names import dns_subdomain_problem
from kubetune.api.redact import redact
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.paths import contained
from kubetune.trainer.storage.uris import Uri


def fetch_configmap(uri: str, *, field: str, **_: object) -> Path:
    parsed = Uri.parse(uri, field=field)
    name, key = parsed.bucket, parsed.key
    if not name or not key or "/" in key or ".." in (name, key) or dns_subdomain_problem(name):
        raise ConfigError(f"{field}: {redact(uri)} must be configmap://<name>/<key> (a ConfigMap name and one key)")
    root = Path(trainer_config.CONFIGMAP_ROOT)  # read at call time: the Job mounts ConfigMap <name> there
    # The kubelet mounts keys as symlinks into ..data/; they must stay inside the ConfigMap's folder.
    path = contained(root / name, key, what=f"{field}: {redact(uri)}: the key")
    if not path.is_file():
        raise ConfigError(
            f"{field}: ConfigMap {name!r} key {key!r} is not mounted at {path} "
            "(does the ConfigMap exist in the job's namespace, and does it have that key?)"
        )
    return path
