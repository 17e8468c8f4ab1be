"""The evaluation gate without a model: the spec's rules, each gate condition, rule scoring, and the result's trip
through the termination message into status.evaluation."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from kubetune.api.conditions import EVALUATION_LINE, EXIT_GATE_FAILED, NON_RETRYABLE_EXIT_CODES
from kubetune.api.v1alpha1 import FineTuneJobSpec, GateSpec, RewardFunctionSpec
from kubetune.operator import status
from kubetune.trainer.evaluation.gate import EvaluationResult, Scores, decide, loss_improvement_percent
from kubetune.trainer.evaluation.measure import rule_scores

PROMPTS = [{"name": "p", "source": "s3://bkt/prompts.json"}]


def spec(stage: str = "sft", evaluation: dict[str, Any] | None = None, **extra: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "stage": stage,
        "model": {"source": "hf://org/model"},
        "datasets": [{"name": "d", "source": "s3://bkt/d.json"}],
        "evaluation": evaluation,
        **extra,
    }
    if stage == "grpo":
        body["training"] = {**body.get("training", {}), "rewardFunctions": [{"type": "answer"}]}
    return FineTuneJobSpec.model_validate(body)


def problems(**kw: Any) -> str:
    with pytest.raises(ValueError) as err:
        spec(**kw)
    return str(err.value)


# ---------------------------------------------------------------------------------------------------- the spec


def test_a_loss_gate_needs_evaluation_data() -> None:
    msg = problems(evaluation={"gate": {"evalLossImprovementPercent": 5}})
    assert "evaluation.gate.evalLossImprovementPercent: needs evaluation data" in msg
    ok = spec(evaluation={"gate": {"evalLossImprovementPercent": 5}}, training={"evalSplit": 0.2})
    assert ok.evaluation is not None and ok.evaluation.gate.eval_loss_improvement_percent == 5
    ok = spec(evaluation={"gate": {"maxEvalLoss": 2}}, evalDatasets=[{"name": "e", "source": "s3://bkt/e.json"}])
    assert ok.evaluation is not None


@pytest.mark.parametrize("stage", ["dpo", "kto", "orpo", "grpo"])
def test_loss_gates_belong_to_pt_and_sft(stage: str) -> None:
    extra: dict[str, Any] = {"training": {"evalSplit": 0.2}}
    if stage in ("dpo", "orpo"):
        extra["datasets"] = [{"name": "d", "source": "s3://bkt/d.json", "ranking": True}]
    if stage == "kto":
        extra["datasets"] = [{"name": "d", "source": "s3://bkt/d.json", "columns": {"ktoTag": "label"}}]
    msg = problems(stage=stage, evaluation={"gate": {"maxEvalLoss": 1}}, **extra)
    assert f"eval-loss gates apply to stages pt and sft, not {stage}" in msg


@pytest.mark.parametrize(
    "evaluation, expected",
    [
        ({"rules": [{"type": "exact"}]}, "evaluation.prompts: rules and rewardModel score answers"),
        ({"prompts": PROMPTS}, "evaluation.rules: prompts need a way to score the answers"),
        ({"prompts": PROMPTS, "rules": [{"type": "regex"}]}, "evaluation.rules.0.pattern: a regex reward needs"),
        ({"prompts": PROMPTS, "rules": [{"type": "regex", "pattern": "("}]}, "not a valid regular expression"),
        ({"prompts": PROMPTS, "rules": [{"type": "exact"}], "gate": {"minReward": 0}}, "needs evaluation.rewardModel"),
        (
            {"prompts": PROMPTS, "rewardModel": {"source": "s3://bkt/rm"}, "gate": {"ruleScoreGain": 0}},
            "needs evaluation.rules",
        ),
        ({}, "nothing to evaluate"),
        ({"prompts": [*PROMPTS, *PROMPTS], "rules": [{"type": "answer"}]}, "duplicate prompt set name 'p'"),
    ],
)
def test_unusable_evaluations_name_the_field(evaluation: dict[str, Any], expected: str) -> None:
    assert expected in problems(evaluation=evaluation)


def test_rm_jobs_have_nothing_to_generate() -> None:
    msg = problems(
        stage="rm",
        datasets=[{"name": "d", "source": "s3://bkt/d.json", "ranking": True}],
        evaluation={"prompts": PROMPTS, "rules": [{"type": "answer"}]},
    )
    assert "evaluation: stage rm trains a scorer" in msg


def test_a_learning_rate_of_zero_is_a_control_run() -> None:
    assert spec(training={"learningRate": 0}).training.learning_rate == 0
    with pytest.raises(ValueError, match="learningRate"):
        spec(training={"learningRate": -1e-4})


def test_the_gate_exit_code_is_not_retried() -> None:
    assert EXIT_GATE_FAILED in NON_RETRYABLE_EXIT_CODES


def test_the_crd_carries_the_evaluation_fields() -> None:
    from kubetune.api.crdgen import build_crd

    crd = build_crd()
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    ev = schema["spec"]["properties"]["evaluation"]
    assert ev["description"] and {"prompts", "rules", "rewardModel", "gate", "maxPrompts"} <= set(ev["properties"])
    gate = ev["properties"]["gate"]["properties"]
    assert all(v.get("description") for v in gate.values())
    assert "exact" in ev["properties"]["rules"]["items"]["properties"]["type"]["enum"]
    assert {"promoted", "base", "trained", "checks"} <= set(schema["status"]["properties"]["evaluation"]["properties"])


# ---------------------------------------------------------------------------------------------------- the gate


def gate(**kw: Any) -> GateSpec:
    return GateSpec.model_validate(kw)


def test_no_conditions_promote() -> None:
    assert decide(gate(), Scores(eval_loss=3.0), Scores(eval_loss=9.0)) == []
    assert EvaluationResult(Scores(), Scores(), []).promoted


@pytest.mark.parametrize(
    "conditions, base, trained, passed",
    [
        ({"evalLossImprovementPercent": 10}, Scores(eval_loss=2.0), Scores(eval_loss=1.7), True),
        ({"evalLossImprovementPercent": 10}, Scores(eval_loss=2.0), Scores(eval_loss=1.9), False),
        ({"evalLossImprovementPercent": 10}, Scores(eval_loss=2.0), Scores(eval_loss=2.0), False),  # lr = 0
        ({"evalLossImprovementPercent": -5}, Scores(eval_loss=2.0), Scores(eval_loss=2.05), True),
        ({"evalLossImprovementPercent": 0}, Scores(eval_loss=2.0), Scores(eval_loss=math.nan), False),
        ({"evalLossImprovementPercent": 0}, Scores(), Scores(eval_loss=1.0), False),  # not measured: fails
        ({"maxEvalLoss": 1.5}, Scores(), Scores(eval_loss=1.5), True),
        ({"maxEvalLoss": 1.5}, Scores(), Scores(eval_loss=math.inf), False),
        ({"minRuleScore": 0.5}, Scores(rule_score=0.0), Scores(rule_score=0.5), True),
        ({"minRuleScore": 0.5}, Scores(rule_score=0.9), Scores(rule_score=0.4), False),
        ({"ruleScoreGain": 0.25}, Scores(rule_score=0.5), Scores(rule_score=0.75), True),
        ({"ruleScoreGain": 0.25}, Scores(rule_score=0.6), Scores(rule_score=0.75), False),
        ({"minReward": -1}, Scores(), Scores(reward=-0.5), True),
        ({"rewardGain": 0.1}, Scores(reward=1.0), Scores(reward=1.05), False),
        ({"minRuleScore": 0.5, "maxEvalLoss": 1}, Scores(), Scores(rule_score=1.0, eval_loss=2.0), False),
    ],
)
def test_each_condition(conditions: dict[str, float], base: Scores, trained: Scores, passed: bool) -> None:
    checks = decide(gate(**conditions), base, trained)
    assert sorted(c.name for c in checks) == sorted(conditions)
    assert all(c.passed for c in checks) is passed
    result = EvaluationResult(base, trained, checks)
    assert result.promoted is passed
    assert result.summary().startswith(f"evaluation gate {'passed' if passed else 'failed'}: ")
    for name in conditions:
        assert name in result.summary()


@given(
    base=hs.floats(min_value=1e-3, max_value=20),
    trained=hs.floats(min_value=0, max_value=20),
    want=hs.floats(min_value=-100, max_value=100),
)
def test_loss_improvement_is_relative_to_the_base(base: float, trained: float, want: float) -> None:
    got = loss_improvement_percent(base, trained)
    assert got is not None and math.isclose(got, 100 * (base - trained) / base)
    (check,) = decide(gate(evalLossImprovementPercent=want), Scores(eval_loss=base), Scores(eval_loss=trained))
    assert check.passed is (got >= want)


@pytest.mark.parametrize("base, trained", [(0.0, 1.0), (-1.0, 1.0), (math.nan, 1.0), (1.0, None), (None, 1.0)])
def test_loss_improvement_is_undefined_without_two_usable_losses(base: Any, trained: Any) -> None:
    assert loss_improvement_percent(base, trained) is None


# ---------------------------------------------------------------------------------------------------- rules


def rules(*specs: dict[str, Any]) -> list[RewardFunctionSpec]:
    return [RewardFunctionSpec.model_validate(s) for s in specs]


def test_rule_kinds() -> None:
    answers = ["The answer is 42.", "  42 ", "forty-two", ""]
    refs = ["42", "42", "42", "42"]
    score, per_rule = rule_scores(rules({"type": "answer"}), answers, refs)
    assert per_rule == {"answer_0": 0.5} and score == 0.5
    score, per_rule = rule_scores(rules({"type": "exact"}), answers, refs)
    assert per_rule == {"exact_0": 0.25} and score == 0.25
    score, per_rule = rule_scores(rules({"type": "regex", "pattern": r"\d+"}), answers, refs)
    assert per_rule == {"regex_0": 0.5}


def test_rule_weights_make_a_weighted_mean() -> None:
    answers, refs = ["I am kubetune", "hello"], ["I am kubetune", "I am kubetune"]
    score, per_rule = rule_scores(
        rules({"type": "exact", "weight": 3}, {"type": "regex", "pattern": "hello"}), answers, refs
    )
    assert per_rule == {"exact_0": 0.5, "regex_1": 0.5}
    assert score == pytest.approx(((3 * 1 + 0) / 4 + (0 + 1) / 4) / 2)


def test_a_reference_less_prompt_cannot_pass_an_exact_or_answer_rule() -> None:
    score, _ = rule_scores(rules({"type": "exact"}, {"type": "answer"}), ["", "anything"], ["", ""])
    assert score == 0.0


@given(hs.lists(hs.text(max_size=20), min_size=1, max_size=8))
def test_rule_scores_stay_between_zero_and_one(answers: list[str]) -> None:
    refs = [a.upper() for a in reversed(answers)]
    score, per_rule = rule_scores(
        rules({"type": "answer", "weight": 2}, {"type": "exact"}, {"type": "regex", "pattern": "a"}), answers, refs
    )
    assert score is not None and 0.0 <= score <= 1.0
    assert all(0.0 <= v <= 1.0 for v in per_rule.values())


# ---------------------------------------------------------------------------------------------------- status


def result(promoted: bool) -> EvaluationResult:
    base = Scores(eval_loss=3.1, perplexity=22.2, rule_score=0.0, prompts=8, rules={"regex_0": 0.0})
    trained = Scores(eval_loss=3.1 if not promoted else 0.5, perplexity=math.inf, rule_score=0.0, prompts=8)
    checks = decide(gate(evalLossImprovementPercent=10), base, trained)
    return EvaluationResult(base, trained, checks, answers=[{"prompt": "Who are you?", "trained": "x" * 500}])


def terminated(message: str, code: int) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {
            "phase": "Failed" if code else "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": code, "message": message}}}],
        },
    }


@pytest.mark.parametrize("promoted", [True, False])
def test_the_result_reaches_status_through_the_termination_message(promoted: bool) -> None:
    r = result(promoted)
    lines = r.termination_lines()
    assert len(lines.encode()) < 4000 and lines.splitlines()[0] == r.summary()
    message = f"succeeded: s3://out/x\n{lines}" if promoted else lines
    report = status.evaluation_report([terminated(message, 0 if promoted else EXIT_GATE_FAILED)])
    assert report is not None and report["promoted"] is promoted
    assert report["base"]["evalLoss"] == 3.1 and report["base"]["prompts"] == 8
    assert "perplexity" not in report["trained"]  # inf is no JSON number: absent, never a broken status
    assert report["checks"][0]["name"] == "evalLossImprovementPercent"
    json.dumps(report, allow_nan=False)


def test_a_gate_failure_is_its_own_reason_and_its_message_is_the_verdict() -> None:
    r = result(False)
    kjob = {
        "metadata": {"name": "j"},
        "spec": {"parallelism": 1},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]},
    }
    verdict = status.job_verdict(
        kjob, [terminated(r.termination_lines(), EXIT_GATE_FAILED)], user_suspended=False, queued=False
    )
    assert verdict.phase == "Failed" and verdict.reason == "EvaluationGateFailed"
    assert verdict.message == r.summary() and EVALUATION_LINE not in verdict.message


@pytest.mark.parametrize(
    "message",
    [
        "succeeded: s3://out/x",
        f"{EVALUATION_LINE}not json",
        f"{EVALUATION_LINE}[1, 2]",
        f'{EVALUATION_LINE}{{"base": {{}}}}',  # no verdict
        f'{EVALUATION_LINE}{{"promoted": "yes please"}}',
        f'{EVALUATION_LINE}{{"promoted": true, "checks": [{{"name": "x"}}]}}',
    ],
)
def test_a_termination_message_without_a_valid_evaluation_line_gives_none(message: str) -> None:
    assert status.evaluation_report([terminated(message, 0)]) is None
