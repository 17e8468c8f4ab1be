"""Run the data pipeline for a TrainerConfig: fetch → read → sample → convert → tokenize → mix → split → finish.

A dataset with zero valid rows fails before any model weights are loaded, naming the
dataset and the reasons its rows were dropped. Tokenized rows are cached per dataset as
Arrow (``datasets.Dataset.save_to_disk``), keyed by content hash + conversion settings +
tokenizer + template + cutoff + stage, so a restarted pod or a second job with the same
data does not tokenize again. The processes of a node tokenize main-process-first: one takes
the dataset's lock file and writes the cache, the others wait on the lock and load it
(``load_from_disk``, memory-mapped), so eight GPUs do the work once, not eight times.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.checks import MAX_NUM_SAMPLES
from kubetune.api.stages import STAGE_CONTRACTS, DataShape, Stage
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.converters import convert_row, get_converter, row_boundary
from kubetune.trainer.data.mixing import mix, split_eval
from kubetune.trainer.data.processors import ProcessorOptions, Tokens, finish, get_processor, texts_of
from kubetune.trainer.data.processors.base import RENDERED
from kubetune.trainer.data.report import DatasetReport
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.sources import data_files, read_rows
from kubetune.trainer.data.templates import Template
from kubetune.trainer.errors import ConfigError, DataError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.fetch import fetch

log = get_logger(__name__)

CACHE_VERSION = "2"  # 2: Arrow folders (1: JSON files)
MAX_SAMPLES = MAX_NUM_SAMPLES
PRIME_CHUNK = 512
MEDIA_PLACEHOLDERS = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    path: Path
    sha256: str
    examples: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    report: DatasetReport | None = None
    settings: str = ""  # what, besides the content, decided ``examples`` (part of the cache key)


@dataclass
class DataBundle:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reports: list[DatasetReport]
    provenance: list[dict[str, Any]]
    packing: dict[str, Any] | None = None


def _sha256_of(path: Path, split: str | None = None, subset: str | None = None) -> str:
    digest = hashlib.sha256()
    for f in data_files(path, split, subset):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def dataset_specs(config: TrainerConfig) -> list[DatasetSpec]:
    specs = list(config.spec.datasets)
    if config.spec.dataset_registry is not None:
        from kubetune.trainer.data.registry import registry_datasets

        specs += registry_datasets(config)
    return specs


def sample_rows(rows: list[Any], num_samples: int | None, max_samples: int | None, seed: int) -> list[tuple[int, Any]]:
    """``numSamples`` (seeded; beyond the dataset size, oversampled with replacement) then ``maxSamples`` (first N)."""
    if num_samples is not None and not (isinstance(num_samples, int) and 0 < num_samples <= MAX_SAMPLES):
        raise ConfigError(f"numSamples must be a whole number from 1 to {MAX_SAMPLES}, not {num_samples!r}")
    if max_samples is not None and not (isinstance(max_samples, int) and max_samples > 0):
        raise ConfigError(f"maxSamples must be a positive whole number, not {max_samples!r}")
    indexed = list(enumerate(rows))
    if num_samples is not None and indexed:
        rng = random.Random(seed)
        if num_samples <= len(indexed):
            indexed = sorted(rng.sample(indexed, num_samples), key=lambda x: x[0])
        else:
            indexed = indexed + [rng.choice(indexed) for _ in range(num_samples - len(indexed))]
    if max_samples is not None:
        indexed = indexed[:max_samples]
    return indexed


def _media_base(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def check_media(row: dict[str, Any], ex: dict[str, Any], spec: DatasetSpec, base: Path) -> None:
    """Media columns: every path must exist (relative paths resolve against the dataset's folder), and the count
    must match the ``<image>``/``<video>``/``<audio>`` placeholders in the messages."""
    texts = [m["content"] for m in (*ex["prompt"], *ex["response"])]
    for kind, placeholder in MEDIA_PLACEHOLDERS.items():
        column = getattr(spec.columns, kind)
        if not column:
            continue
        value = row.get(column)
        paths = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise RowError(f"malformed {kind}", f"column {column!r} must be a list of paths")
        resolved = []
        for p in paths:
            full = Path(p) if Path(p).is_absolute() else base / p
            if not full.is_file():
                raise RowError(f"missing {kind[:-1]} file", f"{p} (looked at {full})")
            resolved.append(str(full))
        marks = sum(t.count(placeholder) for t in texts)
        if marks and marks != len(paths):
            raise RowError(f"{kind} count mismatch", f"{len(paths)} {kind} but {marks} {placeholder} placeholders")
        if kind == "images":
            ex["images"] = resolved


def convert_dataset(
    spec: DatasetSpec,
    path: Path,
    config: TrainerConfig | None = None,
    *,
    max_samples: int | None = None,
    seed: int = 42,
) -> LoadedDataset:
    """Read and convert one dataset; every dropped row is counted with its index and reason."""
    if config is not None:
        max_samples, seed = config.spec.training.max_samples, config.spec.training.seed
    loaded = LoadedDataset(
        spec=spec,
        path=path,
        sha256=_sha256_of(path, spec.split, spec.subset),
        settings=f"{spec.model_dump_json()}|max={max_samples}|seed={seed}",
    )
    report = DatasetReport(name=spec.name, source=spec.source)
    converter = get_converter(spec.formatting)
    rows = list(read_rows(path, spec.split, spec.subset))
    report.rows = len(rows)
    kto_column = spec.columns.kto_tag
    base = _media_base(path)
    has_media = any(getattr(spec.columns, kind) for kind in MEDIA_PLACEHOLDERS)
    for idx, row in sample_rows(rows, spec.num_samples, max_samples, seed):
        if isinstance(row, RowError):
            report.drop(idx, row.reason, row.detail)
            continue
        try:
            media = (lambda ex, row=row: check_media(row, ex, spec, base)) if has_media else None
            ex = convert_row(converter, row, spec, then=media)
        except RowError as err:
            report.drop(idx, err.reason, err.detail)
            continue
        if kto_column and isinstance(row.get(kto_column), str):
            report.warn(idx, "KTO label given as a string", f"{row[kto_column]!r} read as a boolean")
        loaded.examples.append((idx, ex))
    loaded.report = report
    return loaded


# ---------------------------------------------------------------------------------------------------- tokenize


def processor_options(config: TrainerConfig) -> ProcessorOptions:
    training = config.spec.training
    return ProcessorOptions(training.cutoff_len, training.train_on_prompt, training.mask_history, config.spec.packing)


def token_length(item: dict[str, Any]) -> int:
    if "input_ids" in item:
        return len(item["input_ids"])
    if "chosen_ids" in item:
        return len(item["prompt_ids"]) + max(len(item["chosen_ids"]), len(item["rejected_ids"]))
    return len(item.get("prompt_ids", [])) + len(item.get("completion_ids", []))


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}".encode())
    for attr in ("eos_token", "bos_token", "add_bos_token", "chat_template"):
        digest.update(f"|{attr}={getattr(tokenizer, attr, None)}".encode())
    return digest.hexdigest()


def cache_key(
    loaded: LoadedDataset, shape: DataShape, opts: ProcessorOptions, template: Template, tokens: Tokens
) -> str:
    if not hasattr(tokens, "fingerprint"):
        tokens.fingerprint = tokenizer_fingerprint(tokens.tokenizer)  # type: ignore[attr-defined]
    parts = [
        CACHE_VERSION,
        loaded.sha256,
        loaded.settings,
        shape.value,
        repr(opts),
        template.fingerprint(),
        tokens.fingerprint,
    ]  # type: ignore[attr-defined]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cache_path(cache_dir: Path | None, key: str) -> Path | None:
    return None if cache_dir is None else Path(cache_dir) / "tokenized" / key[:2] / key


REPORT = "kubetune-report.json"  # next to the Arrow files: the dataset report and the columns some rows lack


def _cache_load(path: Path | None) -> tuple[list[dict], DatasetReport] | None:
    if path is None or not (path / REPORT).is_file():
        return None
    try:
        import datasets

        meta = json.loads((path / REPORT).read_text(encoding="utf-8"))
        sparse = set(meta.get("sparse", []))
        rows = datasets.load_from_disk(str(path)).to_list()
        if sparse:
            rows = [{k: v for k, v in row.items() if not (v is None and k in sparse)} for row in rows]
        return rows, DatasetReport.from_state(meta["report"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable tokenized cache %s: %s", path, exc)
        return None


def _cache_store(path: Path | None, rows: list[dict], report: DatasetReport) -> None:
    """Arrow files plus the report, written to a temporary folder and renamed into place (readers never see half)."""
    if path is None:
        return
    import shutil

    import datasets

    keys = [set(row) for row in rows]
    every = set.intersection(*keys) if keys else set()
    sparse = sorted(set().union(*keys) - every) if keys else []
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
    (tmp / REPORT).write_text(json.dumps({"report": report.state(), "sparse": sparse}), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    log.info("dataset %s: %d tokenized rows cached at %s", report.name, len(rows), path)


@contextmanager
def first_on_node(path: Path | None) -> Iterator[None]:
    """Main process first, per node: the first process to take ``path``'s lock tokenizes and writes the cache; the
    node's other processes wait for it, then find the cache. A process that dies releases the lock (flock)."""
    if path is None:
        yield
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


def tokenize_dataset(
    loaded: LoadedDataset,
    config: TrainerConfig | None,
    template: Template,
    tokenizer: Any,
    tokens: Tokens | None = None,
    *,
    shape: DataShape | None = None,
    opts: ProcessorOptions | None = None,
    cache_dir: Path | None = None,
) -> list[dict]:
    """Run the stage's per-row processor; every dropped row lands in the report with its index."""
    if config is not None:
        shape = STAGE_CONTRACTS[Stage(config.spec.stage)].shape
        opts = processor_options(config)
        cache_dir = Path(config.runtime.cache_dir)
    assert shape is not None and opts is not None
    processor = get_processor(shape)
    tokens = tokens or Tokens(tokenizer)
    report = loaded.report
    assert report is not None
    path = None if cache_dir is None else _cache_path(cache_dir, cache_key(loaded, shape, opts, template, tokens))
    with first_on_node(path):
        hit = _cache_load(path)
        if hit is not None:
            log.info("dataset %s: tokenized rows from cache %s", loaded.spec.name, path)
            loaded.report = hit[1]
            return hit[0]
        out = _tokenize_rows(loaded, processor, template, tokens, opts, report)
        if out:
            report.packing = _packing_preview(shape, out, opts, tokens)
            _cache_store(path, out, report)
    return out


def _tokenize_rows(
    loaded: LoadedDataset,
    processor: Any,
    template: Template,
    tokens: Tokens,
    opts: ProcessorOptions,
    report: DatasetReport,
) -> list[dict]:
    out: list[dict] = []
    chunks = [loaded.examples[start : start + PRIME_CHUNK] for start in range(0, len(loaded.examples), PRIME_CHUNK)]
    # one batched call into the tokenizer per chunk (Rust, no per-string Python round trips), made in a
    # thread for the next chunk while this one is processed: the tokenizer releases the GIL, so its
    # Rust work and the processors' Python work overlap; the processors then find every text in the cache
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        ahead = pool.submit(tokens.encode_missing, _texts(chunks[0], template)) if chunks else None
        for number, chunk in enumerate(chunks):
            assert ahead is not None
            tokens.remember(ahead.result())
            if number + 1 < len(chunks):
                ahead = pool.submit(tokens.encode_missing, _texts(chunks[number + 1], template))
            out.extend(_process_chunk(chunk, processor, template, tokens, opts, report))
    return out


def _texts(chunk: list[tuple[int, dict[str, Any]]], template: Template) -> list[str]:
    """Every text the processors will tokenize for these rows (rendered now, in the calling thread)."""
    return [text for _, ex in chunk for text in texts_of(ex, template)]


def _process_chunk(
    chunk: list[tuple[int, dict[str, Any]]],
    processor: Any,
    template: Template,
    tokens: Tokens,
    opts: ProcessorOptions,
    report: DatasetReport,
) -> list[dict]:
    out = []
    for idx, ex in chunk:
        try:
            # a chat template that raises on one conversation drops that row; an assertion is a bug, not a row
            item = row_boundary(processor, ex, template, tokens, opts, passthrough=(AssertionError,))
        except RowError as err:
            report.drop(idx, err.reason, err.detail)
            continue
        finally:
            ex.pop(RENDERED, None)
        report.valid += 1
        report.truncated += int(item.get("_truncated", False))
        report.token_lengths.append(token_length(item))
        out.append(item)
    return out


def _packing_preview(shape: DataShape, rows: list[dict], opts: ProcessorOptions, tokens: Tokens) -> dict | None:
    """Packing statistics for this dataset alone (the trainer packs the mix; this is the preflight's number)."""
    if not opts.packing or shape not in (DataShape.PRETRAIN, DataShape.SUPERVISED):
        return None
    _, stats = finish(shape, rows, opts, tokens)
    return stats.to_dict() if stats is not None else None


def check_reports(reports: list[DatasetReport]) -> None:
    empty = [r for r in reports if r.valid == 0]
    if empty:
        details = "\n".join(line for r in empty for line in r.lines())
        names = ", ".join(r.name for r in empty)
        raise DataError(f"no valid rows in dataset(s) {names}; fix the rows or the columns/tags mapping:\n{details}")


def fetch_dataset(spec: DatasetSpec, config: TrainerConfig, field_path: str) -> Path:
    return fetch(
        spec.source,
        field=f"{field_path}.source",
        work_dir=config.runtime.work_dir,
        cache_dir=config.runtime.cache_dir,
        kind="dataset",
        dataset=spec,
        allow=config.runtime.allow_private_urls,
    )


def convert_all(config: TrainerConfig) -> tuple[list[LoadedDataset], list[LoadedDataset]]:
    """Fetch and convert every train and eval dataset (no tokenizer needed)."""
    inline = len(config.spec.datasets)
    train = [
        convert_dataset(
            ds,
            fetch_dataset(ds, config, f"spec.datasets[{i}]" if i < inline else f"spec.datasetRegistry[{ds.name}]"),
            config,
        )
        for i, ds in enumerate(dataset_specs(config))
    ]
    evals = [
        convert_dataset(ds, fetch_dataset(ds, config, f"spec.evalDatasets[{i}]"), config)
        for i, ds in enumerate(config.spec.eval_datasets)
    ]
    return train, evals


def tokenize_all(
    config: TrainerConfig,
    tokenizer: Any,
    template: Template,
    converted: tuple[list[LoadedDataset], list[LoadedDataset]],
) -> DataBundle:
    """Tokenize, report, fail on empty datasets, mix, split off the eval set, then pack (or pair, for KTO)."""
    train_sets, eval_sets = converted
    tokens = Tokens(tokenizer)
    train_groups = [tokenize_dataset(ds, config, template, tokenizer, tokens) for ds in train_sets]
    eval_groups = [tokenize_dataset(ds, config, template, tokenizer, tokens) for ds in eval_sets]
    reports = [ds.report for ds in (*train_sets, *eval_sets) if ds.report is not None]
    for r in reports:
        for line in r.lines():
            log.info(line)
    check_reports(reports)
    t = config.spec.training
    train = mix(train_groups, t.mix_strategy, t.interleave_probs, t.seed)
    evaluation = [row for group in eval_groups for row in group]
    if t.eval_split > 0 and not evaluation:
        train, evaluation = split_eval(train, t.eval_split, t.seed)
    shape = STAGE_CONTRACTS[Stage(config.spec.stage)].shape
    opts = processor_options(config)
    train, packing = finish(shape, train, opts, tokens)
    evaluation, _ = finish(shape, evaluation, opts, tokens)
    if packing is not None:
        log.info(
            "packed %d rows into %d (efficiency %.1f%%)", packing.rows_in, packing.rows_out, 100 * packing.efficiency
        )
    provenance = [
        {
            "name": ds.spec.name,
            "source": ds.spec.source,
            "sha256": ds.sha256,
            "rows": ds.report.rows,
            "valid": ds.report.valid,
            "dropped": ds.report.dropped,
            "role": role,
        }
        for role, group in (("train", train_sets), ("eval", eval_sets))
        for ds in group
        if ds.report is not None
    ]
    return DataBundle(
        train=train,
        eval=evaluation,
        reports=reports,
        provenance=provenance,
        packing=packing.to_dict() if packing is not None else None,
    )
