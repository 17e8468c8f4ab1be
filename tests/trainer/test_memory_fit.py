"""The GPU-fit estimate (kubetune.api.memory) against DeepSpeed's own estimators and against what the trainer
really allocates: parameters, gradients and Adam states counted after an optimizer step of the tiny model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.api.memory import GIB, ModelShape, estimate, vocab_for_source


@pytest.fixture(scope="module")
def deepspeed_estimators() -> Iterator[tuple[Any, Any]]:
    """DeepSpeed's estimators (pure arithmetic: no CUDA needed), with DS_ACCELERATOR=cpu unless set, for this
    module's tests only."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        yield estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


shapes = st.builds(
    lambda layers, hidden, mult, vocab, tied: ModelShape.from_config(
        {
            "num_hidden_layers": layers,
            "hidden_size": hidden * 64,
            "intermediate_size": hidden * 64 * mult // 2,
            "num_attention_heads": hidden,
            "vocab_size": vocab,
            "tie_word_embeddings": tied,
        }
    ),
    st.integers(2, 96),
    st.integers(4, 128),
    st.integers(4, 8),
    st.integers(32000, 262144),
    st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, gpus=st.sampled_from([1, 2, 4, 8, 16, 64]), offload=st.booleans())
def test_model_states_match_deepspeeds_estimators(
    deepspeed_estimators: tuple[Any, Any], shape: ModelShape, gpus: int, offload: bool
) -> None:
    zero2, zero3 = deepspeed_estimators
    n = int(shape.parameters)
    for stage in (2, 3):
        est = estimate(shape, method="full", world_size=gpus, zero_stage=stage, offload=offload, strategy="deepspeed")
        ours = (est.weights_gib + est.gradients_gib + est.optimizer_gib) * GIB
        if stage == 2:
            _cpu, gpu = zero2(n, num_gpus_per_node=gpus, cpu_offload=offload)
        else:  # kubetune's ZeRO-3 offload moves parameters and optimizer (deepspeed_config)
            _cpu, gpu, _layer = zero3(
                n, int(shape.largest_layer), num_gpus_per_node=gpus, cpu_offload=offload, cpu_offload_params=offload
            )
        assert ours == pytest.approx(gpu, rel=1e-6, abs=64), (stage, gpus, offload)


def test_vocabulary_comes_from_the_config_or_the_family_name(tmp_path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "hidden_size": 3584,
                "num_hidden_layers": 28,
                "intermediate_size": 18944,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "vocab_size": 152064,
            }
        )
    )
    assert ModelShape.for_model(f"file://{tmp_path}", None).vocab == 152064
    assert ModelShape.for_model("hf://Qwen/Qwen2.5-7B-Instruct", "7B").vocab == 151936
    assert ModelShape.for_model("hf://meta-llama/Llama-3.1-8B", "8B").vocab == 128256
    assert vocab_for_source("s3://bucket/my-model/") == 32000
    assert ModelShape.for_model("s3://bucket/m/", None) is None
    # a 152k vocabulary makes the logits term 4.75x the 32k guess: 10 B per position and vocabulary entry
    small, big = (
        estimate(ModelShape.from_parameters(7e9, v), method="lora", cutoff_len=4096) for v in (32000, 151936)
    )
    assert big.activations_gib - small.activations_gib == pytest.approx(4096 * (151936 - 32000) * 10 / GIB)


def allocated(model, optimizer) -> tuple[int, int, int]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    states = sum(
        v.numel() * v.element_size()
        for p in trainable
        for v in optimizer.state.get(p, {}).values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    )
    return weights, grads, states


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
def test_the_estimate_counts_what_the_trainer_allocates(tmp_path, tiny_model_dir, method) -> None:
    """bf16 with fp32 master weights: after a step, weights/gradients/Adam states are the estimate's numbers
    (the estimate adds autocast's 16-bit copy of the trainable weights, alive only during the step)."""
    from kubetune.trainer.models.adapters import apply_method
    from kubetune.trainer.models.loader import ModelRef, load_model
    from tests.trainer.models.test_precision import METHODS, config_for, one_step

    config = config_for(tiny_model_dir, method, "bf16")
    model = apply_method(load_model(ModelRef(tiny_model_dir, "test"), config), config.spec)
    from transformers import TrainerCallback

    seen: dict[str, int] = {}

    class GradientBytes(TrainerCallback):  # gradients exist between backward and the optimizer's zero_grad
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            seen["grads"] = allocated(kwargs["model"], kwargs["optimizer"])[1]

    trainer = one_step(model, "bf16", tmp_path, callbacks=[GradientBytes()])
    weights, _, states = allocated(trainer.model, trainer.optimizer)
    grads = seen["grads"]
    shape = ModelShape.from_config(json.loads((tiny_model_dir / "config.json").read_text()))
    spec = METHODS[method]["method"]
    est = estimate(
        shape,
        method=method,
        lora_rank=spec.get("lora", {}).get("rank", 8),
        freeze_layers=spec.get("freeze", {}).get("trainableLayers", 2),
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert grads == pytest.approx(est.gradients_gib * GIB, rel=0.03)
    assert states == pytest.approx(est.optimizer_gib * GIB, rel=0.03)
    assert weights + 2 * trainable == pytest.approx(est.weights_gib * GIB, rel=0.03)
