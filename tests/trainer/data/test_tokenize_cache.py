"""Tokenized rows are cached as Arrow and written once per node: several processes that tokenize the same dataset
(the ranks of a pod) take turns on the dataset's lock; the first writes the cache, the others load it."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.stages import DataShape
from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.conversion import convert_dataset
from kubetune.trainer.data.processors import ProcessorOptions
from kubetune.trainer.data.templates import get_template
from kubetune.trainer.data.tokenization import tokenize_dataset

ROWS = [{"instruction": f"Say {i}", "input": "", "output": f"{i} " * (1 + i % 5)} for i in range(40)]
ROWS += [{"instruction": "", "input": "", "output": "no prompt"}]  # dropped: the report travels with the cache


def tokenize(data: Path, model_dir: str, cache: Path, shape: DataShape = DataShape.SUPERVISED) -> tuple[list, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    loaded = convert_dataset(DatasetSpec.model_validate({"name": "n", "source": f"file://{data}"}), data)
    rows = tokenize_dataset(
        loaded,
        get_template("chatml", tokenizer),
        tokenizer,
        shape=shape,
        opts=ProcessorOptions(cutoff_len=64),
        cache_dir=cache,
    )
    return rows, loaded.report


def rank(args: tuple[str, str, str, Any]) -> tuple[list[str], list[dict]]:
    """One 'rank' of a node: start with the others, tokenize, say what it did."""
    data, model_dir, cache, barrier = args
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("kubetune.trainer.data.tokenization")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    barrier.wait()
    rows, _report = tokenize(Path(data), model_dir, Path(cache))
    return messages, rows


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(ROWS))
    return path


def test_the_cache_is_arrow_and_gives_back_the_same_rows_and_report(data, smollm_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    first, report = tokenize(data, str(smollm_dir), cache)
    (folder,) = [p for p in (cache / "tokenized").glob("*/*") if p.is_dir()]
    assert list(folder.glob("*.arrow")), "rows are stored as Arrow"
    again, cached_report = tokenize(data, str(smollm_dir), cache)
    assert again == first and len(first) == 40
    assert cached_report.state() == report.state() and cached_report.dropped == 1


@pytest.mark.slow
def test_two_processes_write_the_cache_once(data, smollm_dir, tmp_path) -> None:
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.map(rank, [(str(data), str(smollm_dir), str(cache), barrier)] * 2)
    writes = [m for messages, _ in results for m in messages if "tokenized rows cached at" in m]
    loads = [m for messages, _ in results for m in messages if "tokenized rows from cache" in m]
    assert len(writes) == 1 and len(loads) == 1, results
    assert results[0][1] == results[1][1]
    assert len([p for p in (cache / "tokenized").glob("*/*") if p.is_dir()]) == 1
