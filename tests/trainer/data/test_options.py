"""DataOptions: the one object the data pipeline reads, built once from a TrainerConfig.

The pipeline's result depends on these fields only: a run spec that differs elsewhere (model, method,
optimizer, output) gives the same options, and hand-built options (no TrainerConfig at all) run the
same steps as the config they mirror.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.stages import STAGE_CONTRACTS, Stage
from kubetune.api.trainer_config import RuntimeSpec, TrainerConfig
from kubetune.api.v1alpha1 import DatasetSpec, FineTuneJobSpec
from kubetune.trainer.data.loader import check_converted, convert_all, tokenize_all
from kubetune.trainer.data.options import DataOptions
from kubetune.trainer.data.templates import get_template
from kubetune.trainer.errors import DataError

ROWS = [{"instruction": f"Say {i}", "input": "", "output": f"{i} " * (1 + i % 4)} for i in range(12)]


def make_config(
    tmp_path: Path,
    *,
    stage: str = "sft",
    spec: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    **training: Any,
) -> TrainerConfig:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    doc = {
        "stage": stage,
        "model": {"source": "file:///unused"},
        "datasets": [{"name": "rows", "source": f"file://{data}", **(dataset or {})}],
        "training": {"cutoffLen": 64, **training},
        **(spec or {}),
    }
    runtime = RuntimeSpec(
        job_name="t",
        output_uri="file:///dev/null",
        work_dir=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        scratch_dir=str(tmp_path / "scratch"),
        allow_private_urls=["127.0.0.1"],
    )
    return TrainerConfig(spec=FineTuneJobSpec.model_validate(doc), runtime=runtime)


def test_from_config_takes_what_the_pipeline_reads(tmp_path: Path) -> None:
    cfg = make_config(
        tmp_path,
        cutoffLen=128,
        maxSamples=7,
        seed=3,
        evalSplit=0.25,
        maskHistory=True,
        mixStrategy="interleave_under",
        interleaveProbs=[1.0],
    )
    opts = DataOptions.from_config(cfg)
    assert (opts.cutoff_len, opts.max_samples, opts.seed, opts.eval_split) == (128, 7, 3, 0.25)
    assert (opts.train_on_prompt, opts.mask_history) == (False, True)
    assert (opts.mix_strategy, opts.interleave_probs) == ("interleave_under", (1.0,))
    assert opts.stage is Stage.SFT and opts.shape == STAGE_CONTRACTS[Stage.SFT].shape
    assert [d.name for d in opts.datasets] == ["rows"] and opts.eval_datasets == () and opts.registry is None
    assert (opts.work_dir, opts.cache_dir, opts.allow_private_urls) == (
        str(tmp_path),
        str(tmp_path / "cache"),
        ("127.0.0.1",),
    )
    popts = opts.processor_options()
    assert (popts.cutoff_len, popts.train_on_prompt, popts.mask_history) == (128, False, True)
    assert DataOptions.of(opts) is opts and DataOptions.of(cfg) == opts


@pytest.mark.parametrize("stage", [s.value for s in Stage])
def test_packing_resolves_to_the_stage_default_unless_set(tmp_path: Path, stage: str) -> None:
    contract = STAGE_CONTRACTS[Stage(stage)]
    extra = {"rewardModel": {"source": "file:///rm"}} if contract.needs_reward_model else {}
    dataset: dict[str, Any] = {}
    if contract.ranking:
        dataset = {"ranking": True, "columns": {"chosen": "c", "rejected": "r"}}
    elif contract.needs_kto_tag:
        dataset = {"columns": {"ktoTag": "label"}}
    cfg = make_config(tmp_path, stage=stage, dataset=dataset, **extra)
    assert DataOptions.from_config(cfg).packing is STAGE_CONTRACTS[Stage(stage)].default_packing
    cfg.spec.training.packing = not STAGE_CONTRACTS[Stage(stage)].default_packing
    assert DataOptions.from_config(cfg).packing is cfg.spec.training.packing


def test_options_are_frozen(tmp_path: Path) -> None:
    opts = DataOptions.from_config(make_config(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.cutoff_len = 1  # type: ignore[misc]


def test_the_rest_of_the_spec_does_not_reach_the_pipeline(tmp_path: Path) -> None:
    base = DataOptions.from_config(make_config(tmp_path))
    other = make_config(
        tmp_path,
        spec={"model": {"source": "file:///elsewhere", "template": "chatml"}, "method": {"type": "lora"}},
        learningRate=0.5,
        epochs=3,
    )
    assert DataOptions.from_config(other) == base


def test_hand_built_options_run_the_same_steps_as_the_config(tmp_path: Path, tokenizer: Any) -> None:
    cfg = make_config(tmp_path, evalSplit=0.25, maxSamples=10)
    template = get_template("chatml", tokenizer)
    from_config = tokenize_all(cfg, tokenizer, template, convert_all(cfg))
    by_hand = DataOptions(
        stage=Stage.SFT,
        cache_dir=str(tmp_path / "other-cache"),
        datasets=tuple(cfg.spec.datasets),
        cutoff_len=64,
        max_samples=10,
        eval_split=0.25,
        work_dir=str(tmp_path),
    )
    data = tokenize_all(by_hand, tokenizer, template, convert_all(by_hand))
    assert (data.train, data.eval) == (from_config.train, from_config.eval)
    assert (len(data.train), len(data.eval)) == (8, 2)
    assert [r.to_dict() for r in data.reports] == [r.to_dict() for r in from_config.reports]


def test_a_dataset_with_no_converted_row_fails_before_tokenizing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "wrong columns"}) + "\n")
    opts = DataOptions(
        stage=Stage.SFT,
        cache_dir=str(tmp_path / "cache"),
        datasets=(DatasetSpec.model_validate({"name": "bad", "source": f"file://{bad}"}),),
        work_dir=str(tmp_path),
    )
    converted = convert_all(opts)
    with pytest.raises(DataError, match="no valid rows in dataset\\(s\\) bad"):
        check_converted(converted)


@pytest.mark.parametrize("stage", [s.value for s in Stage])
def test_data_check_gives_the_steps_the_options_a_run_would(tmp_path: Path, stage: str) -> None:
    from kubetune.trainer.data.dataset_check import CheckOptions

    check = CheckOptions(stage=stage, cutoff_len=99, max_samples=5, seed=7, cache_dir=tmp_path, allow=["10.0.0.1"])
    opts = check.data_options()
    assert (opts.stage, opts.shape) == (Stage(stage), STAGE_CONTRACTS[Stage(stage)].shape)
    assert (opts.cutoff_len, opts.max_samples, opts.seed) == (99, 5, 7)
    assert (opts.cache_dir, opts.allow_private_urls) == (str(tmp_path), ("10.0.0.1",))
    assert opts.packing is STAGE_CONTRACTS[Stage(stage)].default_packing
    assert CheckOptions(stage=stage, packing=True).data_options().packing is True
