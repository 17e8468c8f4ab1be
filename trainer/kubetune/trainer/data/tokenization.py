"""The template and tokenize steps: one converted dataset rendered by the template and tokenized per stage shape.

Tokenized rows are cached per dataset (:mod:`.token_cache`, Arrow), so a restarted pod or a second
job with the same data does not tokenize again. The processes of a node tokenize main-process-first:
one takes the dataset's lock file and writes the cache, the others wait on the lock and load it,
so eight GPUs do the work once, not eight times. Each dataset's report gets its token lengths and
a packing preview here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubetune.api.stages import DataShape
from kubetune.trainer.data.conversion import LoadedDataset
from kubetune.trainer.data.converters import row_boundary
from kubetune.trainer.data.processors import ProcessorOptions, Tokens, finish, get_processor, texts_of
from kubetune.trainer.data.processors.base import RENDERED
from kubetune.trainer.data.report import DatasetReport
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.templates import Template
from kubetune.trainer.data.token_cache import cache_key, cache_path, first_on_node, load, store
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

PRIME_CHUNK = 512


def token_length(item: dict[str, Any]) -> int:
    if "input_ids" in item:
        return len(item["input_ids"])
    if "chosen_ids" in item:
        return len(item["prompt_ids"]) + max(len(item["chosen_ids"]), len(item["rejected_ids"]))
    return len(item.get("prompt_ids", [])) + len(item.get("completion_ids", []))


def tokenize_dataset(
    loaded: LoadedDataset,
    template: Template,
    tokenizer: Any,
    tokens: Tokens | None = None,
    *,
    shape: DataShape,
    opts: ProcessorOptions,
    cache_dir: str | Path | None = None,
) -> list[dict]:
    """Run the stage's per-row processor; every dropped row lands in the report with its index."""
    processor = get_processor(shape)
    tokens = tokens or Tokens(tokenizer)
    report = loaded.report
    assert report is not None
    path = None if cache_dir is None else cache_path(cache_dir, cache_key(loaded, shape, opts, template, tokens))
    with first_on_node(path):
        hit = load(path)
        if hit is not None:
            log.info("dataset %s: tokenized rows from cache %s", loaded.spec.name, path)
            loaded.report = hit[1]
            return hit[0]
        out = _tokenize_rows(loaded, processor, template, tokens, opts, report)
        if out:
            report.packing = _packing_preview(shape, out, opts, tokens)
            if path is not None:
                store(path, out, report)
                log.info("dataset %s: %d tokenized rows cached at %s", report.name, len(out), path)
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
