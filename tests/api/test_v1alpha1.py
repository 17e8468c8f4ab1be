"""The FineTuneJob models: defaults, cross-field rules, and error paths as users wrote them."""

from __future__ import annotations

import copy

import pytest

from kubetune.api.validation import InvalidFineTuneJob, parse_job
from tests.conftest import job_doc

BASE = {
    "stage": "sft",
    "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "datasets": [{"name": "identity", "source": "file://data/identity.json"}],
}


def with_changes(**changes):
    spec = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = spec
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[parts[-1]] = value
    return spec


def test_minimal_job_gets_defaults():
    job = parse_job(job_doc(BASE))
    assert job.spec.method.type == "lora"
    assert job.spec.method.lora.rank == 8
    assert job.spec.training.cutoff_len == 1024
    assert job.spec.datasets[0].formatting == "alpaca"
    # LLaMA-Factory trap: giving one column must keep the other defaults.
    job = parse_job(
        job_doc(with_changes(datasets=[{"name": "d", "source": "file://x.json", "columns": {"prompt": "q"}}]))
    )
    cols = job.spec.datasets[0].columns
    assert (cols.prompt, cols.query, cols.response, cols.messages) == ("q", "input", "output", "conversations")


def test_grpo_trains_on_rule_rewards_without_a_reward_model():
    spec = with_changes(
        stage="grpo",
        training={
            "rewardFunctions": [{"type": "answer"}, {"type": "regex", "pattern": "<think>.*</think>", "weight": 0.5}]
        },
    )
    rules = parse_job(job_doc(spec)).spec.training.reward_functions
    assert [(r.type, r.pattern, r.weight) for r in rules] == [
        ("answer", None, 1.0),
        ("regex", "<think>.*</think>", 0.5),
    ]


def test_qlora_implies_4bit_nf4_and_pt_implies_packing():
    job = parse_job(job_doc(with_changes(method={"type": "qlora"})))
    assert job.spec.quantization.bits == 4 and job.spec.quantization.type == "nf4"
    pt = parse_job(job_doc(with_changes(stage="pt")))
    assert pt.spec.packing is True
    assert parse_job(job_doc(BASE)).spec.packing is False


@pytest.mark.parametrize(
    "spec, expected",
    [
        pytest.param(with_changes(stage="ppx"), "spec.stage: 'ppx' is not allowed", id="unknown-stage"),
        pytest.param(
            with_changes(method={"lora": {"rank": -1}}), "spec.method.lora.rank: must be > 0", id="negative-rank"
        ),
        pytest.param(
            with_changes(method={"type": "full"}, model={"source": "hf://a/b", "quantization": {"bits": 4}}),
            "spec.model.quantization: quantization only works with method lora or qlora",
            id="qlora-with-full",
        ),
        pytest.param(
            with_changes(stage="dpo"),
            "spec.datasets[0].ranking: stage dpo needs pairwise data",
            id="dpo-needs-ranking",
        ),
        pytest.param(
            with_changes(
                datasets=[
                    {"name": "d", "source": "file://x", "ranking": True, "columns": {"chosen": "c", "rejected": "r"}}
                ]
            ),
            "spec.datasets[0].ranking: stage sft does not train on pairwise data",
            id="sft-with-ranking",
        ),
        pytest.param(
            with_changes(model={"source": "ftp://x/y"}),
            "spec.model.source: unsupported URI 'ftp://x/y'",
            id="bad-scheme",
        ),
        pytest.param(
            with_changes(datasets__0__formating="alpaca"),
            "spec.datasets[0].formating: unknown field (did you mean 'formatting'?)",
            id="typo",
        ),
        pytest.param(
            with_changes(stage="ppo"), "spec.training.rewardModel: stage ppo needs a reward model", id="ppo-needs-rm"
        ),
        pytest.param(
            with_changes(stage="kto"),
            "spec.datasets[0].columns.ktoTag: stage kto needs a boolean label column",
            id="kto-needs-tag",
        ),
        pytest.param(
            with_changes(stage="grpo"),
            "spec.training.rewardModel: stage grpo needs a reward model (source or fromJob) "
            "or training.rewardFunctions",
            id="grpo-needs-a-reward",
        ),
        pytest.param(
            with_changes(training={"rewardFunctions": [{"type": "answer"}]}),
            "spec.training.rewardFunctions: rewardFunctions apply to stage grpo only, not sft",
            id="rules-only-grpo",
        ),
        pytest.param(
            with_changes(stage="grpo", training={"rewardFunctions": [{"type": "regex", "pattern": "(a"}]}),
            "spec.training.rewardFunctions[0].pattern: not a valid regular expression",
            id="bad-regex",
        ),
        pytest.param(
            with_changes(stage="grpo", training={"rewardFunctions": [{"type": "regex"}]}),
            "spec.training.rewardFunctions[0].pattern: a regex reward needs a pattern",
            id="regex-without-pattern",
        ),
        pytest.param(
            with_changes(training={"epochs": "many"}), "spec.training.epochs: must be a number", id="wrong-type"
        ),
        pytest.param(with_changes(resources={"nodes": 0}), "spec.resources.nodes: must be >= 1", id="zero-nodes"),
        pytest.param(with_changes(datasets=[]), "spec.datasets: give at least one dataset", id="no-data"),
        pytest.param(
            with_changes(training={"reward_model": {"source": "file://x"}}),
            "spec.training.reward_model: unknown field (did you mean 'rewardModel'?)",
            id="snake-case",
        ),
    ],
)
def test_invalid_specs_name_the_field(spec, expected):
    with pytest.raises(InvalidFineTuneJob) as info:
        parse_job(job_doc(spec), "job.yaml")
    text = str(info.value)
    assert expected in text, text
    assert all(line.startswith("job.yaml: ") for line in text.splitlines())


@pytest.mark.parametrize("name", ["Bad_Name", "x" * 64, "-leading", "trailing-"])
def test_metadata_name_must_be_a_dns_label(name):
    with pytest.raises(InvalidFineTuneJob) as info:
        parse_job(job_doc(BASE, name=name))
    assert "metadata.name" in str(info.value)


def test_every_problem_is_reported_not_just_the_first():
    spec = with_changes(method={"lora": {"rank": 0, "dropout": 2}}, training={"batchSize": 0})
    with pytest.raises(InvalidFineTuneJob) as info:
        parse_job(job_doc(spec))
    paths = [p.path for p in info.value.problems]
    assert {"spec.method.lora.rank", "spec.method.lora.dropout", "spec.training.batchSize"} <= set(paths)


def test_round_trip_is_camel_case():
    job = parse_job(job_doc(with_changes(training={"batchSize": 2, "gradientAccumulation": 4})))
    out = job.spec.to_dict()
    assert out["training"]["batchSize"] == 2 and out["training"]["gradientAccumulation"] == 4
    assert "batch_size" not in out["training"]
