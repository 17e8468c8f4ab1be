"""Methods on the sft stage with the tiny model: full, freeze, LoRA variants (DoRA, rsLoRA, PiSSA, LoRA+),
QLoRA with bitsandbytes on CPU, and the merged export."""

from __future__ import annotations

import json

import pytest
import torch

from tests.trainer.stages.helpers import decreasing, losses, manifest, run_job, tiny_job

pytestmark = pytest.mark.slow


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_full_finetune_saves_a_whole_model(tmp_path, tiny_model_dir, cache_dir):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "sft",
        "sft",
        method={"type": "full"},
        training={"maxSteps": 4, "learningRate": 0.001},
        output={"uri": "file://out", "merge": True},
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    values = losses(out)
    assert decreasing(values, 1, 1), values
    manifest(out)
    assert not (out / "adapter_config.json").exists() and not (out / "merged").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_freeze_trains_only_the_last_layer(tmp_path, tiny_model_dir, cache_dir):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "sft",
        "sft",
        method={"type": "freeze", "freeze": {"trainableLayers": 1}},
        training={"maxSteps": 3, "learningRate": 0.001},
    )
    assert run_job(job, cache_dir) == 0
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "out")
    changed = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    assert changed and all(".layers.1." in k for k in changed), sorted(changed)


@pytest.mark.parametrize(
    "lora, config_keys",
    [
        ({"rank": 8, "dora": True, "rslora": True, "loraplusRatio": 16}, {"use_dora": True, "use_rslora": True}),
        ({"rank": 4, "pissa": True, "target": ["q_proj", "v_proj"]}, {"init_lora_weights": "pissa_niter_4"}),
    ],
    ids=["dora-rslora-loraplus", "pissa"],
)
def test_lora_variants(tmp_path, tiny_model_dir, cache_dir, lora, config_keys):
    job = tiny_job(
        tmp_path, tiny_model_dir, "sft", "sft", method={"type": "lora", "lora": lora}, training={"maxSteps": 4}
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    values = losses(out)
    assert decreasing(values, 1, 1), values
    cfg = json.loads((out / "adapter_config.json").read_text())
    for key, value in config_keys.items():
        assert cfg[key] == value, (key, cfg[key])


def test_loraplus_gives_b_matrices_a_higher_learning_rate(tiny_model_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from kubetune.api.v1alpha1 import FineTuneJobSpec
    from kubetune.trainer.models.adapters import lora_config, optimizers

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"source": "file:///m"},
            "datasets": [{"name": "d", "source": "file:///d.json"}],
            "method": {"type": "lora", "lora": {"loraplusRatio": 16}},
            "training": {"learningRate": 0.001},
        }
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_config(spec))
    optimizer, _ = optimizers(model, spec, TrainingArguments(output_dir="/tmp/unused", learning_rate=0.001))
    rates = {g["lr"] for g in optimizer.param_groups if g["params"]}
    assert rates == {0.001, 0.016}


@pytest.mark.parametrize(
    "quantization",
    [{"bits": 4, "type": "nf4", "doubleQuant": True}, {"bits": 4, "type": "fp4"}, {"bits": 8}],
    ids=["nf4-double", "fp4", "int8"],
)
def test_qlora_on_cpu_with_merged_export(tmp_path, tiny_model_dir, cache_dir, quantization):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "sft",
        "sft",
        model={"source": f"file://{tiny_model_dir}", "quantization": quantization},
        method={"type": "qlora", "lora": {"rank": 8}},
        training={"maxSteps": 4},
        output={"uri": "file://out", "merge": True},
    )
    assert run_job(job, cache_dir) == 0
    out = tmp_path / "out"
    values = losses(out)
    assert decreasing(values, 1, 1), values
    manifest(out)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = _weights(tiny_model_dir)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[key], base[key])  # the adapter is folded in


@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_base_is_really_quantized(tmp_path, tiny_model_dir, bits, layer):
    from kubetune.api.trainer_config import TrainerConfig
    from kubetune.trainer.models.adapters import apply_method
    from kubetune.trainer.models.loader import ModelRef, load_model

    config = TrainerConfig.model_validate(
        {
            "spec": {
                "model": {"source": f"file://{tiny_model_dir}", "quantization": {"bits": bits}},
                "datasets": [{"name": "d", "source": "file:///d.json"}],
                "method": {"type": "qlora"},
            },
            "runtime": {
                "jobName": "q",
                "outputUri": "file:///o",
                "cacheDir": str(tmp_path),
                "scratchDir": str(tmp_path),
            },
        }
    )
    model = apply_method(load_model(ModelRef(path=tiny_model_dir, source="file://m"), config), config.spec)
    kinds = {type(m).__name__ for m in model.modules()}
    assert layer in kinds, sorted(kinds)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
