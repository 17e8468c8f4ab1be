"""The GPU-fit estimate against LLaMA-Factory's published memory table for 7B models, and its use in validation."""

from __future__ import annotations

import pytest

from kubetune.api.memory import ModelShape, estimate, gpu_memory_gib, parse_parameters
from kubetune.api.validation import InvalidFineTuneJob, parse_job
from tests.conftest import job_doc

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}

# LLaMA-Factory README "Hardware Requirement", 7B column (GB), gradient checkpointing on (its default).
LLAMAFACTORY_7B = [
    ("full", None, False, 120),
    ("full", None, True, 60),  # pure_bf16
    ("lora", None, False, 16),
    ("lora", 8, False, 10),
    ("lora", 4, False, 6),
]


def test_parameter_count_from_config():
    assert ModelShape.from_config(LLAMA2_7B).parameters == pytest.approx(6.74e9, rel=0.01)


@pytest.mark.parametrize("method, bits, pure_bf16, published_gb", LLAMAFACTORY_7B)
@pytest.mark.parametrize(
    "shape", [ModelShape.from_config(LLAMA2_7B), ModelShape.from_parameters(7e9)], ids=["config", "guess"]
)
def test_matches_llamafactory_table_within_20_percent(shape, method, bits, pure_bf16, published_gb):
    est = estimate(shape, method=method, bits=bits, pure_bf16=pure_bf16, gradient_checkpointing=True, cutoff_len=1024)
    published_gib = published_gb * 1e9 / 2**30
    assert est.total_gib == pytest.approx(published_gib, rel=0.2), est.describe()


def test_zero3_and_offload_shrink_the_per_gpu_share():
    shape = ModelShape.from_config(LLAMA2_7B)
    single = estimate(shape, method="full", gradient_checkpointing=True)
    zero3 = estimate(shape, method="full", gradient_checkpointing=True, world_size=8, zero_stage=3)
    offload = estimate(shape, method="full", gradient_checkpointing=True, world_size=8, zero_stage=3, offload=True)
    assert single.total_gib > zero3.total_gib > offload.total_gib


def test_parsing_helpers():
    assert parse_parameters("7B") == 7e9 and parse_parameters("135m") == 135e6 and parse_parameters("1.5B") == 1.5e9
    assert gpu_memory_gib("H100-80GB") == 80 and gpu_memory_gib("nvidia-a10g") == 24 and gpu_memory_gib("X-48GB") == 48
    with pytest.raises(ValueError):
        parse_parameters("lots")


def _spec(method="full", gpu="L4", **extra):
    spec = {
        "model": {"source": "hf://meta-llama/Llama-2-7b-hf", "parameters": "7B"},
        "datasets": [{"name": "d", "source": "file://d.json"}],
        "method": {"type": method},
        "resources": {"gpusPerNode": 1, "gpuType": gpu},
    }
    spec.update(extra)
    return spec


def test_validation_rejects_a_job_that_cannot_fit_with_advice():
    with pytest.raises(InvalidFineTuneJob) as info:
        parse_job(job_doc(_spec()))
    text = str(info.value)
    assert "spec.resources.gpuType: needs ~" in text and "24 GiB of a L4" in text
    assert "qlora" in text or "lora" in text
    assert "zeroStage 3" in text


def test_validation_accepts_qlora_7b_on_l4_and_full_on_many_h100s():
    parse_job(job_doc(_spec(method="qlora", training={"gradientCheckpointing": True})))
    parse_job(
        job_doc(
            _spec(
                method="full",
                gpu="H100-80GB",
                resources={"nodes": 2, "gpusPerNode": 8, "gpuType": "H100"},
                distributed={"strategy": "deepspeed", "zeroStage": 3},
                training={"gradientCheckpointing": True},
            )
        )
    )
