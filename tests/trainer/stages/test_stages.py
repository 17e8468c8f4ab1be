"""Every stage trains a few steps on CPU with the tiny model, through `kubetune run`'s code path.

Each checks: the run succeeds, losses are finite and fall, the manifest is complete and verifies,
and the adapter loads back with peft. rm's output is the reward model of the ppo and grpo runs.
"""

from __future__ import annotations

import pytest

from tests.trainer.stages.helpers import decreasing, history, losses, manifest, run_job, tiny_job

pytestmark = pytest.mark.slow


def _load_adapter(model_dir, out, seq_cls=False):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if seq_cls:
        base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = PeftModel.from_pretrained(base, out)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    return model


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_model_dir, cache_dir):
    """An rm job's output: a LoRA sequence-classification adapter trained on preference pairs."""
    tmp = tmp_path_factory.mktemp("rm")
    assert run_job(tiny_job(tmp, tiny_model_dir, "rm", "pairwise", training={"maxSteps": 6}), cache_dir) == 0
    return tmp / "out"


def test_rm_learns_to_rank(reward_model, tiny_model_dir):
    data = manifest(reward_model)
    assert data["config"]["stage"] == "rm"
    values = losses(reward_model)
    assert decreasing(values), values
    model = _load_adapter(tiny_model_dir, reward_model, seq_cls=True)
    assert model.peft_config["default"].task_type == "SEQ_CLS"


def test_pt_packed_text_with_eval_perplexity(tmp_path, tiny_model_dir, cache_dir):
    job = tiny_job(tmp_path, tiny_model_dir, "pt", "text", training={"maxSteps": 5, "evalSplit": 0.2, "evalSteps": 2})
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    values = losses(out)
    assert decreasing(values), values
    assert [h["step"] for h in history(out) if "eval_loss" in h][:2] == [2, 4]  # every evalSteps, then at the end
    metrics = manifest(out)["metrics"]
    assert metrics["eval_loss"] > 0 and metrics["eval_perplexity"] == pytest.approx(
        2.718281828 ** metrics["eval_loss"], rel=1e-4
    )
    _load_adapter(tiny_model_dir, out)


@pytest.mark.parametrize("loss", ["sigmoid", "simpo"])
def test_dpo(tmp_path, tiny_model_dir, cache_dir, loss):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "dpo",
        "pairwise",
        training={"maxSteps": 4, "preference": {"loss": loss, "beta": 0.5}},
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    values = losses(out)
    assert decreasing(values, 1, 1), values
    assert manifest(out)["metrics"]["global_step"] == 4
    _load_adapter(tiny_model_dir, out)


def test_kto(tmp_path, tiny_model_dir, cache_dir):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "kto",
        "kto",
        training={"maxSteps": 4, "kto": {"desirableWeight": 1.0, "undesirableWeight": 1.5}},
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    values = losses(out)
    assert decreasing(values, 1, 1), values
    manifest(out)
    _load_adapter(tiny_model_dir, out)


def test_orpo(tmp_path, tiny_model_dir, cache_dir):
    job = tiny_job(tmp_path, tiny_model_dir, "orpo", "pairwise", training={"maxSteps": 4})
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    values = losses(out)
    assert decreasing(values, 1, 1), values
    manifest(out)
    _load_adapter(tiny_model_dir, out)


def test_ppo_against_the_rm_output(tmp_path, tiny_model_dir, cache_dir, reward_model):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "ppo",
        "prompts",
        training={
            "maxSteps": 3,
            "rewardModel": {"source": f"file://{reward_model}"},
            "ppo": {"maxNewTokens": 8, "rolloutBatchSize": 4, "ppoEpochs": 2},
        },
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    logged = [h for h in history(out) if "reward" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    for h in logged:
        for key in ("reward", "kl", "policy_loss", "value_loss", "loss"):
            assert h[key] == h[key] and abs(h[key]) < 1e6, (key, h)  # finite
    assert (out / "value_head.safetensors").exists()
    metrics = manifest(out)["metrics"]
    assert metrics["global_step"] == 3 and "reward_last" in metrics
    model = _load_adapter(tiny_model_dir, out)
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in b), "PPO updates must move the adapter"


def test_grpo_against_the_rm_output(tmp_path, tiny_model_dir, cache_dir, reward_model):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "grpo",
        "prompts",
        training={
            "maxSteps": 2,
            "batchSize": 2,
            "rewardModel": {"source": f"file://{reward_model}"},
            "ppo": {"maxNewTokens": 6, "rolloutBatchSize": 2},
        },
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    logged = [h for h in history(out) if "reward" in h]
    assert len(logged) == 2 and all(h["reward"] == h["reward"] for h in logged)
    manifest(out)
    _load_adapter(tiny_model_dir, out)


def test_ppo_sigterm_checkpoint_and_resume(tmp_path, tiny_model_dir, cache_dir, reward_model):
    """Our PPO loop honours the same checkpoint contract as the TRL stages: SIGTERM → save → resume."""
    import os
    import shutil
    import signal
    import uuid

    from transformers import TrainerCallback

    from kubetune.api.validation import load_jobs
    from kubetune.trainer.local import local_config
    from kubetune.trainer.runner import run
    from kubetune.trainer.stages.resume import Preempted, complete_checkpoints

    class SigtermAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "ppo",
        "prompts",
        name=f"ppo-{uuid.uuid4().hex[:8]}",
        training={
            "maxSteps": 4,
            "rewardModel": {"source": f"file://{reward_model}"},
            "ppo": {"maxNewTokens": 6, "rolloutBatchSize": 2, "ppoEpochs": 1},
        },
        checkpointing={"everySteps": 10},
    )
    (spec,) = load_jobs(job)
    config = local_config(spec, job, cache_dir=cache_dir)
    with pytest.raises(Preempted, match="step 2"):
        run(config, callbacks=[SigtermAt()])
    work_dir = cache_dir / "runs" / "default" / spec.metadata.name / "trainer"
    assert [p.name for p in complete_checkpoints(work_dir)] == ["checkpoint-2"]

    result = run(config)
    assert result.metrics["resumed_from_step"] == 2 and result.metrics["global_step"] == 4
    assert [h["step"] for h in history(tmp_path / "out") if "reward" in h] == [1, 2, 3, 4]
    assert complete_checkpoints(work_dir) == []
    shutil.rmtree(work_dir.parent, ignore_errors=True)  # this run's scratch in the shared cache


def test_dpo_continues_an_sft_adapter(tmp_path, tiny_model_dir, cache_dir):
    """sft → dpo with spec.model.adapter.source: DPO trains the SFT adapter further."""
    from safetensors.torch import load_file

    sft_dir = tmp_path / "sft"
    sft_dir.mkdir()
    assert run_job(tiny_job(sft_dir, tiny_model_dir, "sft", "sft", training={"maxSteps": 2}), cache_dir) == 0
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "dpo",
        "pairwise",
        training={"maxSteps": 2},
        model={"source": f"file://{tiny_model_dir}", "adapter": {"source": f"file://{sft_dir / 'out'}"}},
    )
    assert run_job(job, cache_dir) == 0
    before = load_file(str(sft_dir / "out" / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before)
    assert all(before[k].shape == after[k].shape for k in before)
