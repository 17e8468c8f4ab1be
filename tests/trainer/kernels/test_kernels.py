"""training.attention / training.kernels: the choice of ``auto``, every refusal, and the chunked loss."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.models.kernels import Device, resolve

CPU = Device(cuda=False)
H100 = Device(cuda=True, capability=(9, 0), name="NVIDIA H100 80GB HBM3")
A100 = Device(cuda=True, capability=(8, 0), name="NVIDIA A100-SXM4-80GB")
T4 = Device(cuda=True, capability=(7, 5), name="Tesla T4")
B200 = Device(cuda=True, capability=(10, 0), name="NVIDIA B200")
EVERYTHING = frozenset({"flash_attn", "flash_attn_interface", "liger_kernel"})
NOTHING: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    ("device", "installed", "expected"),
    [
        (CPU, EVERYTHING, "sdpa"),  # no GPU: never a CUDA kernel, whatever is installed
        (H100, EVERYTHING, "flash_attention_3"),  # Hopper with FA3 built
        (H100, frozenset({"flash_attn"}), "flash_attention_2"),
        (A100, EVERYTHING, "flash_attention_2"),  # FA3 is Hopper-only
        (B200, EVERYTHING, "flash_attention_2"),  # FA3's kernels are sm90 only
        (T4, EVERYTHING, "sdpa"),  # FA2 needs Ampere (8.0) or newer
        (H100, NOTHING, "sdpa"),
    ],
)
def test_auto_picks_the_fastest_attention_this_machine_runs(device, installed, expected):
    assert resolve("auto", [], device, installed).attention == expected


def test_auto_on_a_gpu_without_flash_attention_says_so_once():
    chosen = resolve("auto", [], H100, NOTHING)
    assert chosen.attention == "sdpa" and len(chosen.notes) == 1 and "flash-attn" in chosen.notes[0]
    assert resolve("auto", [], CPU, NOTHING).notes == ()


@pytest.mark.parametrize(
    ("attention", "kernels", "device", "installed", "needle"),
    [
        ("flash_attention_2", [], CPU, EVERYTHING, "training.attention: flash_attention_2 needs an NVIDIA GPU"),
        ("flash_attention_2", [], A100, NOTHING, "pip install flash-attn"),
        ("flash_attention_2", [], T4, EVERYTHING, "compute capability 7.5"),
        ("flash_attention_3", [], A100, EVERYTHING, "Hopper"),
        ("sdpa", ["liger"], CPU, EVERYTHING, "training.kernels[0]: liger needs an NVIDIA GPU"),
        (
            "sdpa",
            ["chunked_loss", "liger"],
            H100,
            NOTHING,
            "training.kernels[1]: liger needs the liger_kernel package",
        ),
    ],
)
def test_an_unusable_choice_is_one_line_naming_the_field_and_the_fix(attention, kernels, device, installed, needle):
    with pytest.raises(ConfigError) as err:
        resolve(attention, kernels, device, installed)
    message = str(err.value)
    assert needle in message and "\n" not in message


def test_explicit_choices_that_run_here_are_kept():
    assert resolve("eager", ["chunked_loss"], CPU, NOTHING).to_manifest() == {
        "attention": "eager",
        "kernels": ["chunked_loss"],
    }
    assert resolve("flash_attention_2", ["liger"], A100, EVERYTHING).kernels == ("liger",)


def _spec(training: dict, resources: dict | None = None, distributed: dict | None = None) -> dict:
    return {
        "stage": "sft",
        "model": {"source": "file:///m"},
        "datasets": [{"name": "d", "source": "file:///d.json"}],
        "method": {"type": "lora"},
        "training": training,
        "resources": resources or {},
        "distributed": distributed or {},
    }


@pytest.mark.parametrize(
    ("training", "resources", "distributed", "field"),
    [
        ({"attention": "flash_attention_2"}, {"gpusPerNode": 0}, None, "training.attention"),
        ({"kernels": ["liger"]}, {"gpusPerNode": 0}, None, "training.kernels.0"),
        ({"kernels": ["chunked_loss", "chunked_loss"]}, None, None, "training.kernels.1"),
        ({"kernels": ["chunked_loss", "liger"]}, None, None, "training.kernels"),
        ({"kernels": ["chunked_loss"]}, None, {"strategy": "fsdp"}, "training.kernels"),
        ({"attention": "flash_attention_4"}, None, None, "training.attention"),
        ({"kernels": ["unsloth"]}, None, None, "training.kernels.0"),
    ],
)
def test_the_spec_refuses_what_no_pod_could_run(training, resources, distributed, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate(_spec(training, resources, distributed))
    text = str(err.value)
    assert field.split(".")[-1] in text and field.split(".")[0] in text


def test_cpu_jobs_may_chunk_the_loss():
    spec = FineTuneJobSpec.model_validate(
        _spec({"kernels": ["chunked_loss"], "attention": "sdpa"}, {"gpusPerNode": 0})
    )
    assert spec.training.kernels == ["chunked_loss"]


def test_the_crd_lists_the_choices():
    from kubetune.api.crdgen import build_crd

    crd = build_crd()
    training = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["training"]
    assert "flash_attention_2" in training["properties"]["attention"]["enum"]
    assert training["properties"]["kernels"]["items"]["enum"] == ["liger", "chunked_loss"]
    assert training["properties"]["kernels"]["description"]


# ------------------------------------------------------------------ the chunked loss, on the tiny model


def test_chunked_loss_equals_the_whole_loss_and_its_gradients(tiny_model_dir, tmp_path):
    """Chunks of 3 positions (so several chunks and a ragged last one) give the same loss and gradients."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kubetune.trainer.stages.causal_lm import make_trainer_class

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    rows = []
    for text in ("the quick brown fox jumps", "over the lazy dog again and again", "hi"):
        ids = tok(text)["input_ids"]
        rows.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(rows)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")

    def loss_and_grads(trainer):
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        trainer._hook.remove()
        return loss.detach(), grads

    whole, whole_grads = loss_and_grads(make_trainer_class()(model=model, args=args))
    chunked, chunked_grads = loss_and_grads(make_trainer_class(3)(model=model, args=args))
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-5)
    # the same sums in another order: float32 rounding only
    torch.testing.assert_close(chunked_grads, whole_grads, rtol=1e-3, atol=1e-5)
    assert (chunked_grads - whole_grads).norm() < 1e-4 * whole_grads.norm()


def test_chunked_loss_never_holds_all_logits(tiny_model_dir, tmp_path):
    """The LM head sees at most one chunk of positions, forwards and backwards (recomputed)."""
    import torch
    from transformers import AutoModelForCausalLM, TrainingArguments

    from kubetune.trainer.stages.causal_lm import make_trainer_class

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    seen: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: seen.append(out.shape[-2]))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = make_trainer_class(4)(model=model, args=args)
    ids = torch.randint(5, 100, (2, 11))
    loss = trainer.compute_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    loss.backward()
    assert max(seen) == 4 and sum(seen) >= 2 * 2 * 10  # 20 trained positions, each run forward and recomputed


def test_softcapped_models_keep_their_soft_cap():
    import torch

    from kubetune.trainer.stages.causal_lm import logit_postprocess

    class Config:
        final_logit_softcapping = 30.0

    x = torch.tensor([100.0, -100.0, 1.0])
    assert torch.allclose(logit_postprocess(Config())(x), torch.tanh(x / 30.0) * 30.0)
    assert torch.equal(logit_postprocess(object())(x), x)
