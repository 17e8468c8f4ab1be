"""The data pipeline of a run, one step per module, each entered once, in order.

:func:`convert_all` (no tokenizer needed, so bad data fails before any weights load):
    registry (which datasets) → sources (fetch, read rows) → conversion (sample, convert).
:func:`tokenize_all` (with the model's tokenizer and template):
    tokenization (render with the template, tokenize per stage shape, cached) → report (log; fail on a
    dataset with no valid row) → mixing (mix, split off the eval set) → packing (``processors.finish``:
    pack, or pair for KTO).

Both read :class:`DataOptions` (built once from the TrainerConfig by ``DataOptions.from_config``),
never the whole spec. No step module imports this one back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubetune.trainer.data.conversion import LoadedDataset, convert_dataset, sample_rows
from kubetune.trainer.data.mixing import mix, split_eval
from kubetune.trainer.data.options import DataOptions
from kubetune.trainer.data.processors import Tokens, finish
from kubetune.trainer.data.registry import dataset_specs
from kubetune.trainer.data.report import DatasetReport, check_reports, log_reports
from kubetune.trainer.data.sources import fetch_dataset
from kubetune.trainer.data.templates import Template
from kubetune.trainer.data.tokenization import tokenize_dataset
from kubetune.trainer.logging import get_logger

if TYPE_CHECKING:
    from kubetune.api.trainer_config import TrainerConfig

log = get_logger(__name__)

Converted = tuple[list[LoadedDataset], list[LoadedDataset]]  # (train, eval)


@dataclass
class DataBundle:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reports: list[DatasetReport]
    provenance: list[dict[str, Any]]
    packing: dict[str, Any] | None = None


def convert_all(options: DataOptions | TrainerConfig) -> Converted:
    """Fetch, read and convert every train and eval dataset (no tokenizer needed)."""
    opts = DataOptions.of(options)
    inline = len(opts.datasets)
    train = [
        convert_dataset(
            ds,
            fetch_dataset(ds, opts, f"spec.datasets[{i}]" if i < inline else f"spec.datasetRegistry[{ds.name}]"),
            max_samples=opts.max_samples,
            seed=opts.seed,
        )
        for i, ds in enumerate(dataset_specs(opts))
    ]
    evals = [
        convert_dataset(
            ds, fetch_dataset(ds, opts, f"spec.evalDatasets[{i}]"), max_samples=opts.max_samples, seed=opts.seed
        )
        for i, ds in enumerate(opts.eval_datasets)
    ]
    return train, evals


def check_converted(converted: Converted) -> None:
    """Fail now, before any weights load, when a training dataset has no row left after conversion."""
    train, _ = converted
    check_reports([ds.report for ds in train if not ds.examples and ds.report is not None])


def tokenize_all(
    options: DataOptions | TrainerConfig, tokenizer: Any, template: Template, converted: Converted
) -> DataBundle:
    """Tokenize, report, fail on empty datasets, mix, split off the eval set, then pack (or pair, for KTO)."""
    opts = DataOptions.of(options)
    train_sets, eval_sets = converted
    tokens = Tokens(tokenizer)
    shape, popts = opts.shape, opts.processor_options()

    def tokenized(ds: LoadedDataset) -> list[dict[str, Any]]:
        return tokenize_dataset(ds, template, tokenizer, tokens, shape=shape, opts=popts, cache_dir=opts.cache_dir)

    train_groups = [tokenized(ds) for ds in train_sets]
    eval_groups = [tokenized(ds) for ds in eval_sets]
    reports = [ds.report for ds in (*train_sets, *eval_sets) if ds.report is not None]
    log_reports(reports)
    check_reports(reports)
    probs = None if opts.interleave_probs is None else list(opts.interleave_probs)
    train = mix(train_groups, opts.mix_strategy, probs, opts.seed)
    evaluation = [row for group in eval_groups for row in group]
    if opts.eval_split > 0 and not evaluation:
        train, evaluation = split_eval(train, opts.eval_split, opts.seed)
    train, packing = finish(shape, train, popts, tokens)
    evaluation, _ = finish(shape, evaluation, popts, tokens)
    if packing is not None:
        log.info(
            "packed %d rows into %d (efficiency %.1f%%)", packing.rows_in, packing.rows_out, 100 * packing.efficiency
        )
    return DataBundle(
        train=train,
        eval=evaluation,
        reports=reports,
        provenance=provenance(train_sets, eval_sets),
        packing=packing.to_dict() if packing is not None else None,
    )


def provenance(train_sets: list[LoadedDataset], eval_sets: list[LoadedDataset]) -> list[dict[str, Any]]:
    """What the manifest records of each dataset: where it came from, its content hash, what was kept."""
    return [
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


# the steps' names, as importers of this module have known them
__all__ = [
    "Converted",
    "DataBundle",
    "DataOptions",
    "LoadedDataset",
    "check_converted",
    "check_reports",
    "convert_all",
    "convert_dataset",
    "dataset_specs",
    "fetch_dataset",
    "provenance",
    "sample_rows",
    "tokenize_all",
    "tokenize_dataset",
]
