"""grpo's rule-based rewards (spec.training.rewardFunctions): the pure functions, then a run without a reward model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kubetune.trainer.stages.grpo.rewards import answer_reward, completion_text, regex_reward, reward_functions


def test_answer_reward_finds_the_reference_ignoring_case_and_spacing():
    completions = ["The answer is  42.", "I think it is 41", "KUBETUNE   assistant here", "anything"]
    references = ["42", "42", "kubetune assistant", ""]
    assert answer_reward(completions, references) == [1.0, 0.0, 1.0, 0.0]  # no reference: cannot be verified
    assert answer_reward(["a"]) == [0.0]


def test_regex_reward_searches_across_lines_and_reads_conversations():
    think = regex_reward(r"<think>.*</think>")
    assert think(["<think>a\nb</think> 4", "no tags", "<think>open"]) == [1.0, 0.0, 0.0]
    assert completion_text([{"role": "assistant", "content": "<think>x</think>"}]) == "<think>x</think>"
    assert think([[{"role": "assistant", "content": "<think>x</think>"}]]) == [1.0]


def test_reward_functions_are_named_and_weighted_for_trl():
    specs = [
        SimpleNamespace(type="answer", pattern=None, weight=1.0),
        SimpleNamespace(type="regex", pattern=r"\d+", weight=0.5),
        SimpleNamespace(type="regex", pattern=r"^ok", weight=2.0),
    ]
    pairs = reward_functions(specs)
    assert [fn.__name__ for fn, _ in pairs] == ["answer_0", "regex_1", "regex_2"]
    assert [w for _, w in pairs] == [1.0, 0.5, 2.0]
    answer, digits, ok = (fn for fn, _ in pairs)
    assert answer(["it is 7"], response_text=["7"], prompts=["q"]) == [1.0]  # TRL passes extra columns as kwargs
    assert digits(["abc", "a1"]) == [0.0, 1.0] and ok(["ok then", "not ok"]) == [1.0, 0.0]


@pytest.mark.slow
def test_grpo_with_rule_rewards_only(tmp_path, tiny_model_dir, cache_dir):
    """No reward model: the answer and format rewards alone drive grpo, each logged under its own name."""
    from tests.trainer.stages.helpers import history, manifest, run_job, tiny_job

    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "grpo",
        "prompts",
        training={
            "maxSteps": 2,
            "batchSize": 2,
            "ppo": {"maxNewTokens": 6, "rolloutBatchSize": 2},
            "rewardFunctions": [{"type": "answer"}, {"type": "regex", "pattern": r"\w", "weight": 0.5}],
        },
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    logged = [h for h in history(out) if "reward" in h]
    assert len(logged) == 2
    assert all("rewards/answer_0/mean" in h and "rewards/regex_1/mean" in h for h in logged), logged[0]
    manifest(out)
