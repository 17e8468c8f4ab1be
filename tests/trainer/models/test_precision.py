"""Mixed precision keeps fp32 master weights: after a real optimizer step under bf16 (and fp16 where the CPU has
autocast for it), every trainable parameter, its gradient and Adam's state are fp32 for full, freeze, LoRA and
QLoRA; the frozen weights stay in 16 bit (or 4 bit), and the step really changed the trained weights."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.models.adapters import apply_method
from kubetune.trainer.models.loader import ModelRef, load_model
from kubetune.trainer.models.precision import autocast_flags, state_dtypes

pytestmark = pytest.mark.slow

METHODS: dict[str, dict[str, Any]] = {
    "full": {"method": {"type": "full"}},
    "freeze": {"method": {"type": "freeze", "freeze": {"trainableLayers": 1}}},
    "lora": {"method": {"type": "lora", "lora": {"rank": 4}}},
    "qlora": {"method": {"type": "qlora", "lora": {"rank": 4}}, "quantization": {"bits": 4}},
}


def config_for(model_dir, method: str, precision: str) -> TrainerConfig:
    extra = dict(METHODS[method])
    quantization = extra.pop("quantization", None)
    model = {"source": f"file://{model_dir}", **({"quantization": quantization} if quantization else {})}
    return TrainerConfig.model_validate(
        {
            "spec": {
                "model": model,
                "datasets": [{"name": "d", "source": "file:///d.json"}],
                "training": {"precision": precision, "learningRate": 0.01},
                **extra,
            },
            "runtime": {"jobName": "p", "outputUri": "file:///tmp/out", "cacheDir": "/tmp", "scratchDir": "/tmp"},
        }
    )


def one_step(model: Any, precision: str, tmp_path, callbacks: list[Any] | None = None) -> Any:
    """One optimizer step through transformers' Trainer with the autocast flags the stages use."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    ids = list(range(5, 37))
    rows = Dataset.from_list([{"input_ids": ids, "labels": ids, "attention_mask": [1] * len(ids)}] * 2)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=0.01,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        **autocast_flags(precision),
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)
    trainer.train()
    return trainer


def frozen_dtypes(model: Any) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if not p.requires_grad}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainable_weights_and_optimizer_state_are_fp32(tmp_path, tiny_model_dir, method, precision):
    config = config_for(tiny_model_dir, method, precision)
    model = apply_method(load_model(ModelRef(tiny_model_dir, "test"), config), config.spec)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    trainer = one_step(model, precision, tmp_path)
    dtypes = state_dtypes(trainer.model, trainer.optimizer)
    assert dtypes["params"] == {torch.float32}, dtypes
    assert dtypes["optimizer"] == {torch.float32}, dtypes  # Adam's exp_avg / exp_avg_sq
    assert dtypes["grads"] <= {torch.float32}, dtypes
    changed = [n for n, p in trainer.model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert changed, "the optimizer step changed no trainable weight"
    cpu_fp16 = precision == "fp16" and not torch.cuda.is_available()
    if method in ("freeze", "lora") and not cpu_fp16:
        expected = torch.bfloat16 if precision == "bf16" else torch.float16
        assert expected in frozen_dtypes(trainer.model), "frozen weights must stay in 16 bit (half the memory)"
    if method == "qlora":  # the base stays 4-bit
        assert "Linear4bit" in {type(m).__name__ for m in trainer.model.modules()}


def test_bf16_autocast_is_on_wherever_training_runs():
    assert autocast_flags("bf16") == {"bf16": True, "fp16": False}
    assert autocast_flags("fp32") == {"bf16": False, "fp16": False}
    assert autocast_flags("fp16")["fp16"] == torch.cuda.is_available()
