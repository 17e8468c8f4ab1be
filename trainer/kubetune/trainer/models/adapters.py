"""Attach the training method to a loaded model: full, freeze, lora, qlora (peft)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJobSpec, MethodType
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)


def lora_config(spec: FineTuneJobSpec, task_type: str = "CAUSAL_LM") -> Any:
    from peft import LoraConfig

    lora = spec.method.lora
    target: Any = "all-linear" if lora.target == ["all"] else list(lora.target)
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha or 2 * lora.rank,
        lora_dropout=lora.dropout,
        target_modules=target,
        use_dora=lora.dora,
        use_rslora=lora.rslora,
        init_lora_weights="pissa_niter_4" if lora.pissa else True,
        task_type=task_type,
    )


def _layer_index(name: str) -> int | None:
    match = re.search(r"\.layers\.(\d+)\.", name) or re.search(r"\.h\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def apply_freeze(model: Any, spec: FineTuneJobSpec) -> Any:
    freeze = spec.method.freeze
    names = [n for n, _ in model.named_parameters()]
    layers = sorted({i for n in names if (i := _layer_index(n)) is not None})
    if freeze.modules:
        trainable = lambda n: any(m in n for m in freeze.modules)
    else:
        if not layers:
            raise ConfigError("spec.method.freeze: the model has no numbered decoder layers; name modules instead")
        n = freeze.trainable_layers
        chosen = set(layers[-n:]) if n > 0 else set(layers[:-n])
        trainable = lambda name: _layer_index(name) in chosen
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad = bool(trainable(name))
        count += int(param.requires_grad)
    if count == 0:
        raise ConfigError(f"spec.method.freeze.modules: no parameter name contains any of {freeze.modules}")
    return model


def apply_method(
    model: Any, spec: FineTuneJobSpec, adapter_path: Path | None = None, task_type: str = "CAUSAL_LM"
) -> Any:
    """The model with the method applied and its trainable parameters in fp32 (mixed precision's master weights)."""
    from transformers import set_seed

    from kubetune.trainer.models.precision import keep_master_weights_fp32

    # new adapter weights (LoRA A, PiSSA/DoRA init) come from spec.training.seed, not from whatever the process's
    # RNG held: the same job gives the same run on any number of processes (the Trainer only seeds after this)
    set_seed(spec.training.seed)
    return keep_master_weights_fp32(_attach(model, spec, adapter_path, task_type), spec.training.precision)


def _attach(model: Any, spec: FineTuneJobSpec, adapter_path: Path | None, task_type: str) -> Any:
    method = MethodType(spec.method.type)
    if method == MethodType.FULL:
        return model
    if method == MethodType.FREEZE:
        return apply_freeze(model, spec)
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if spec.quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
    if adapter_path is not None:
        log.info("continuing from adapter %s", adapter_path)
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    return get_peft_model(model, lora_config(spec, task_type))


def optimizers(model: Any, spec: FineTuneJobSpec, args: Any) -> tuple[Any, Any]:
    """The ``optimizers`` pair for a Trainer: LoRA+ (B matrices at ``loraplusRatio`` x lr) or the default."""
    ratio = spec.method.lora.loraplus_ratio
    if ratio is None or MethodType(spec.method.type) not in (MethodType.LORA, MethodType.QLORA):
        return None, None
    import torch
    from peft.optimizers import create_loraplus_optimizer

    optimizer = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=args.learning_rate, loraplus_lr_ratio=ratio, weight_decay=args.weight_decay
    )
    return optimizer, None


def export_merged(ctx: Any, model: Any = None, model_class: Any = None) -> Path | None:
    """``spec.output.merge``: the base model (unquantized) merged with the saved adapter, in ``<artifact>/merged``."""
    from kubetune.trainer.logging import is_main

    spec = ctx.config.spec
    if not spec.output.merge or not is_main():
        return None
    if MethodType(spec.method.type) in (MethodType.FULL, MethodType.FREEZE):
        log.info("output.merge: method %s already saves the whole model; nothing to merge", spec.method.type)
        return None
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kubetune.trainer.models.loader import torch_dtype

    cls = model_class or AutoModelForCausalLM
    base = cls.from_pretrained(
        ctx.model_ref.path,
        dtype=torch_dtype(spec.training.precision),
        trust_remote_code=spec.model.trust_remote_code,
        **_pad_kwargs(ctx, cls),
    )
    merged = PeftModel.from_pretrained(base, ctx.artifact_dir).merge_and_unload()
    out = Path(ctx.artifact_dir) / "merged"
    merged.save_pretrained(out)
    ctx.tokenizer.save_pretrained(out)
    log.info("merged model written to %s", out)
    return out


def _pad_kwargs(ctx: Any, cls: Any) -> dict[str, Any]:
    if "SequenceClassification" in getattr(cls, "__name__", ""):
        return {"num_labels": 1, "pad_token_id": ctx.tokenizer.pad_token_id}
    return {}
