"""LLaMA-Factory ``dataset_info.json`` → :class:`DatasetSpec` list.

The source key is chosen in LLaMA-Factory's order: ``hf_hub_url``/``ms_hub_url`` (ModelScope
when ``USE_MODELSCOPE_HUB=1`` or no ``hf_hub_url``), ``script_url``, ``cloud_file_name``,
``file_name``. Relative ``file_name`` entries resolve against the registry's own location,
whatever its scheme (a folder, an S3 prefix, an https path, the same ConfigMap).

One trap is fixed: a ``columns`` or ``tags`` block that names some keys keeps the defaults
of the keys it leaves out (LLaMA-Factory turns them into null). Unknown keys, unknown
names and unsupported sources fail loudly, naming the entry.
"""

from __future__ import annotations

import json
import os
import re
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from kubetune.api.redact import redact
from kubetune.api.stages import Stage
from kubetune.api.v1alpha1 import ColumnsSpec, DatasetSpec, TagsSpec, dataset_problems
from kubetune.trainer.data.options import DataOptions
from kubetune.trainer.errors import ConfigError, DataError
from kubetune.trainer.storage.fetch import fetch
from kubetune.trainer.storage.paths import UnsafePath, check_relative

SOURCE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "file_name")
OTHER_KEYS = ("formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags")
COLUMN_KEYS = tuple(ColumnsSpec.model_fields)
TAG_KEYS = tuple(TagsSpec.model_fields)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


# A registry read from one of these may point at any other source; one read from elsewhere (s3://, https://,
# pvc://, configmap://: written by whoever controls that store) may not make the pod read its own files.
_LOCAL_SCHEMES = ("file", "pvc", "configmap")


def join_relative(base_uri: str, name: str) -> str:
    """``name`` relative to the folder holding ``base_uri`` (the dataset_info.json).

    Only a file:// registry (the user's own) may name an absolute path or another local URI; any other
    registry names files inside its own folder (no absolute path, no ``..``) or remote URIs.
    """
    scheme = base_uri.split("://", 1)[0]
    if scheme != "file":
        target = name.split("://", 1)[0] if "://" in name else ""
        if target in _LOCAL_SCHEMES or (not target and name.startswith("/")):
            raise DataError(
                f"file_name {name!r} in the {scheme}:// registry {redact(base_uri)} points at a file of "
                "the pod; a remote registry names files beside it (a relative name) or remote URIs"
            )
        if not target:
            try:
                check_relative(name, what="file_name")
            except UnsafePath as exc:
                raise DataError(f"{exc} (in the registry {redact(base_uri)})") from None
    if "://" in name:
        return name
    if name.startswith("/"):
        return f"file://{name}"
    scheme, rest = base_uri.split("://", 1)
    parent = rest.rsplit("/", 1)[0] if "/" in rest else rest
    if scheme == "configmap":  # configmap://<name>/<key>: sibling keys of the same ConfigMap
        parent = rest.split("/", 1)[0]
    return f"{scheme}://{parent}/{name}"


def _source(name: str, entry: dict[str, Any], base_uri: str) -> str:
    where = f"dataset_info.json entry {name!r}"
    hf, ms = entry.get("hf_hub_url"), entry.get("ms_hub_url")
    if ms and (_truthy("USE_MODELSCOPE_HUB") or not hf):
        return f"ms://{ms}"
    if entry.get("om_hub_url") and (_truthy("USE_OPENMIND_HUB") or not hf):
        raise DataError(
            f"{where}: om_hub_url (OpenMind) is not supported; mirror the data to s3:// or give hf_hub_url"
        )
    if hf:
        return f"hf://{hf}"
    if entry.get("script_url"):
        raise DataError(
            f"{where}: script_url (a dataset loading script) is not supported; convert the data to "
            "json/jsonl/parquet and use file_name or cloud_file_name"
        )
    cloud = entry.get("cloud_file_name")
    if cloud:
        if not str(cloud).startswith("s3://"):
            raise DataError(f"{where}: cloud_file_name {cloud!r} is not s3://; gs:// and gcs:// are not supported")
        return str(cloud)
    if entry.get("file_name"):
        return join_relative(base_uri, str(entry["file_name"]))
    raise DataError(f"{where}: no source; give one of {', '.join(SOURCE_KEYS)}")


def _block(name: str, entry: dict[str, Any], key: str, known: tuple[str, ...]) -> dict[str, str]:
    value = entry.get(key) or {}
    if not isinstance(value, dict):
        raise DataError(f"dataset_info.json entry {name!r}: {key} must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise DataError(
            f"dataset_info.json entry {name!r}: unknown {key} key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    # a key given as null keeps its default: the fix for LLaMA-Factory's all-None trap
    return {to_camel(k): v for k, v in value.items() if v is not None}


def entry_to_spec(name: str, entry: Any, base_uri: str) -> DatasetSpec:
    where = f"dataset_info.json entry {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: must be an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(SOURCE_KEYS) - set(OTHER_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SOURCE_KEYS + OTHER_KEYS)}")
    doc: dict[str, Any] = {"name": name, "source": _source(name, entry, base_uri)}
    for key, alias in (
        ("formatting", "formatting"),
        ("ranking", "ranking"),
        ("subset", "subset"),
        ("split", "split"),
        ("folder", "folder"),
        ("num_samples", "numSamples"),
    ):
        if entry.get(key) is not None:
            doc[alias] = entry[key]
    doc["columns"] = _block(name, entry, "columns", COLUMN_KEYS)
    doc["tags"] = _block(name, entry, "tags", TAG_KEYS)
    try:
        return DatasetSpec.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DataError(f"{where}: {problems}") from None


def parse_registry(data: Any, base_uri: str, names: list[str]) -> list[DatasetSpec]:
    """The entries ``names`` of a parsed dataset_info.json, in order."""
    if not isinstance(data, dict):
        raise DataError(f"dataset_info.json ({base_uri}) must be an object of named entries")
    out = []
    for name in names:
        if name not in data:
            close = get_close_matches(name, list(data), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; it has {len(data)} entries"
            raise DataError(f"dataset {name!r} is not in dataset_info.json ({base_uri}){hint}")
        out.append(entry_to_spec(name, data[name], base_uri))
    return out


def load_registry_file(path: Path, base_uri: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"dataset_info.json ({base_uri}) is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"dataset_info.json ({base_uri}) is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (RecursionError, ValueError) as exc:  # nested past the parser's depth, a number over the digit limit
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise DataError(f"dataset_info.json ({base_uri}) cannot be read: {reason}") from None


def split_names(value: str | list[str]) -> list[str]:
    names = value if isinstance(value, list) else re.split(r"\s*,\s*", value.strip())
    return [n for n in names if n]


def check_stage(specs: list[DatasetSpec], stage: Stage | str) -> None:
    """Fail (naming the dataset) when a dataset does not fit the stage, e.g. ranking data for sft."""
    problems = [
        f"dataset {ds.name!r}: {'.'.join(p)}: {m}" for ds in specs for p, m in dataset_problems(ds, Stage(stage))
    ]
    if problems:
        raise DataError("dataset(s) not applicable to stage " + Stage(stage).value + ":\n  " + "\n  ".join(problems))


def dataset_specs(opts: DataOptions) -> list[DatasetSpec]:
    """The training datasets: ``spec.datasets``, then the ``spec.datasetRegistry`` entries it names."""
    return [*opts.datasets, *registry_datasets(opts)]


def registry_datasets(opts: DataOptions) -> list[DatasetSpec]:
    """``spec.datasetRegistry``: fetch the dataset_info.json, parse the named entries, check them against the stage."""
    registry = opts.registry
    if registry is None:
        return []
    path = fetch(
        registry.source,
        field="spec.datasetRegistry.source",
        work_dir=opts.work_dir,
        cache_dir=opts.cache_dir,
        kind="dataset",
        allow=list(opts.allow_private_urls),
    )
    if path.is_dir():
        path = path / "dataset_info.json"
    if not path.is_file():
        raise ConfigError(f"spec.datasetRegistry.source: {registry.source} holds no dataset_info.json")
    base = registry.source
    if base.startswith("file://") and not base.endswith(".json"):
        base = base.rstrip("/") + "/dataset_info.json"
    elif base.startswith("file://"):
        base = f"file://{path}"
    specs = parse_registry(load_registry_file(path, registry.source), base, split_names(registry.names))
    check_stage(specs, opts.stage)
    return specs
