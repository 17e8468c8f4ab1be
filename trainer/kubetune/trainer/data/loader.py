"""Run the data pipeline for a TrainerConfig: fetch → read → convert → process → report.

A dataset with zero valid rows fails here — before any model weights are loaded —
naming the dataset and the reasons its rows were dropped.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.stages import STAGE_CONTRACTS, Stage
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.converters import get_converter
from kubetune.trainer.data.processors import ProcessorOptions, Tokens, finish, get_processor, texts_of
from kubetune.trainer.data.report import DatasetReport
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.sources import data_files, read_rows
from kubetune.trainer.data.templates import Template
from kubetune.trainer.errors import DataError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.fetch import fetch

log = get_logger(__name__)


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    path: Path
    sha256: str
    examples: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    report: DatasetReport | None = None


@dataclass
class DataBundle:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reports: list[DatasetReport]
    provenance: list[dict[str, Any]]


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for f in data_files(path):
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


def _sample(rows: list[Any], spec: DatasetSpec, max_samples: int | None, seed: int) -> list[tuple[int, Any]]:
    indexed = list(enumerate(rows))
    if spec.num_samples is not None:
        rng = random.Random(seed)
        n = spec.num_samples
        if n <= len(indexed):
            indexed = sorted(rng.sample(indexed, n), key=lambda x: x[0])
        else:
            indexed = indexed + [rng.choice(indexed) for _ in range(n - len(indexed))]
    if max_samples is not None:
        indexed = indexed[:max_samples]
    return indexed


def convert_dataset(spec: DatasetSpec, path: Path, config: TrainerConfig) -> LoadedDataset:
    """Read and convert one dataset; every dropped row is counted with its index and reason."""
    loaded = LoadedDataset(spec=spec, path=path, sha256=_sha256_of(path))
    report = DatasetReport(name=spec.name, source=spec.source)
    converter = get_converter(spec.formatting)
    rows = list(read_rows(path))
    report.rows = len(rows)
    kto_column = spec.columns.kto_tag
    for idx, row in _sample(rows, spec, config.spec.training.max_samples, config.spec.training.seed):
        if isinstance(row, RowError):
            report.drop(idx, row.reason, row.detail)
            continue
        try:
            ex = converter(row, spec)
        except RowError as err:
            report.drop(idx, err.reason, err.detail)
            continue
        if kto_column and isinstance(row.get(kto_column), str):
            report.warn(idx, "KTO label given as a string", f"{row[kto_column]!r} read as a boolean")
        loaded.examples.append((idx, ex))
    loaded.report = report
    return loaded


def processor_options(config: TrainerConfig) -> ProcessorOptions:
    training = config.spec.training
    return ProcessorOptions(training.cutoff_len, training.train_on_prompt, training.mask_history, config.spec.packing)


def token_length(item: dict[str, Any]) -> int:
    if "input_ids" in item:
        return len(item["input_ids"])
    if "chosen_ids" in item:
        return len(item["prompt_ids"]) + max(len(item["chosen_ids"]), len(item["rejected_ids"]))
    return len(item.get("prompt_ids", [])) + len(item.get("completion_ids", []))


PRIME_CHUNK = 512


def tokenize_dataset(loaded: LoadedDataset, config: TrainerConfig, template: Template, tokenizer: Any,
                     tokens: Tokens | None = None) -> list[dict]:
    """Run the stage's per-row processor; every dropped row lands in the report with its index."""
    shape = STAGE_CONTRACTS[Stage(config.spec.stage)].shape
    processor = get_processor(shape)
    opts = processor_options(config)
    tokens = tokens or Tokens(tokenizer)
    report = loaded.report
    assert report is not None
    out = []
    examples = loaded.examples
    for start in range(0, len(examples), PRIME_CHUNK):
        chunk = examples[start : start + PRIME_CHUNK]
        tokens.prime(text for _, ex in chunk for text in texts_of(ex, template))
        for idx, ex in chunk:
            try:
                item = processor(ex, template, tokens, opts)
            except RowError as err:
                report.drop(idx, err.reason, err.detail)
                continue
            report.valid += 1
            report.truncated += int(item.get("_truncated", False))
            report.token_lengths.append(token_length(item))
            out.append(item)
    return out


def check_reports(reports: list[DatasetReport]) -> None:
    empty = [r for r in reports if r.valid == 0]
    if empty:
        details = "\n".join(line for r in empty for line in r.lines())
        names = ", ".join(r.name for r in empty)
        raise DataError(f"no valid rows in dataset(s) {names}; fix the rows or the columns/tags mapping:\n{details}")


def fetch_dataset(spec: DatasetSpec, config: TrainerConfig, field_path: str) -> Path:
    return fetch(
        spec.source, field=f"{field_path}.source", work_dir=config.runtime.work_dir, cache_dir=config.runtime.cache_dir,
        kind="dataset", dataset=spec, allow=config.runtime.allow_private_urls,
    )


def convert_all(config: TrainerConfig) -> tuple[list[LoadedDataset], list[LoadedDataset]]:
    """Fetch and convert every train and eval dataset (no tokenizer needed)."""
    train = [
        convert_dataset(ds, fetch_dataset(ds, config, f"spec.datasets[{i}]"), config)
        for i, ds in enumerate(dataset_specs(config))
    ]
    evals = [
        convert_dataset(ds, fetch_dataset(ds, config, f"spec.evalDatasets[{i}]"), config)
        for i, ds in enumerate(config.spec.eval_datasets)
    ]
    return train, evals


def tokenize_all(
    config: TrainerConfig, tokenizer: Any, template: Template,
    converted: tuple[list[LoadedDataset], list[LoadedDataset]],
) -> DataBundle:
    """Tokenize converted datasets, report, fail on empty ones, and split off the eval set."""
    train_sets, eval_sets = converted
    tokens = Tokens(tokenizer)
    train = [row for ds in train_sets for row in tokenize_dataset(ds, config, template, tokenizer, tokens)]
    evaluation = [row for ds in eval_sets for row in tokenize_dataset(ds, config, template, tokenizer, tokens)]
    reports = [ds.report for ds in (*train_sets, *eval_sets) if ds.report is not None]
    for r in reports:
        for line in r.lines():
            log.info(line)
    check_reports(reports)
    split = config.spec.training.eval_split
    if split > 0 and not evaluation:
        order = list(range(len(train)))
        random.Random(config.spec.training.seed).shuffle(order)
        held = set(order[: max(1, round(len(train) * split))])
        evaluation = [train[i] for i in sorted(held)]
        train = [row for i, row in enumerate(train) if i not in held]
    shape = STAGE_CONTRACTS[Stage(config.spec.stage)].shape
    opts = processor_options(config)
    train, packing = finish(shape, train, opts, tokens)
    evaluation, _ = finish(shape, evaluation, opts, tokens)
    if packing is not None:
        log.info("packed %d rows into %d (efficiency %.1f%%)", packing.rows_in, packing.rows_out, 100 * packing.efficiency)
    provenance = [
        {"name": ds.spec.name, "source": ds.spec.source, "sha256": ds.sha256, "rows": ds.report.rows,
         "valid": ds.report.valid, "dropped": ds.report.dropped, "role": role}
        for role, group in (("train", train_sets), ("eval", eval_sets)) for ds in group if ds.report is not None
    ]
    return DataBundle(train=train, eval=evaluation, reports=reports, provenance=provenance)
