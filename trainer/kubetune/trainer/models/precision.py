"""Mixed precision with fp32 master weights: what a trainable parameter is stored in.

``training.precision: bf16 | fp16`` loads the frozen weights in 16 bit to save memory, but every
parameter the optimizer updates is kept in fp32 and the forward pass runs under autocast
(``TrainingArguments(bf16=True)`` / ``fp16=True``, see :func:`autocast_flags`), as the HF Trainer,
LLaMA-Factory and PEFT expect: Adam's moments are then fp32 too, small updates are not rounded away
in bf16, and fp16's gradient scaler can unscale fp32 gradients (it refuses fp16 ones). This holds
for full, freeze, LoRA and QLoRA alike; PEFT already makes LoRA weights fp32, and QLoRA's
``prepare_model_for_kbit_training`` upcasts the non-quantized weights.

Where accelerate has no autocast for the precision (fp16 on CPU), mixing 16-bit frozen layers with
fp32 trainable ones would fail in the first matmul, so the whole model trains in fp32 instead.
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.logging import get_logger

log = get_logger(__name__)


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def autocast_flags(precision: str) -> dict[str, bool]:
    """The TrainingArguments ``bf16``/``fp16`` flags: autocast wherever accelerate provides it."""
    import torch

    from kubetune.trainer.models.loader import torch_dtype

    dtype = torch_dtype(precision)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16 and not _on_cpu()}


def keep_master_weights_fp32(model: Any, precision: str) -> Any:
    """Trainable parameters to fp32 (frozen ones stay in the load dtype); returns ``model``."""
    import torch

    from kubetune.trainer.models.loader import torch_dtype

    dtype = torch_dtype(precision)
    if dtype == torch.float32:
        return model
    quantized = bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(getattr(model, "base_model", None), "is_loaded_in_4bit", False)
    )
    if dtype == torch.float16 and _on_cpu() and not quantized:
        log.warning("training.precision fp16: CPU workers have no fp16 autocast; training in fp32")
        return model.float()
    upcast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            upcast += param.numel()
    if upcast:
        log.info("fp32 master weights: %.1fM trainable parameters upcast from %s", upcast / 1e6, dtype)
    return model


def state_dtypes(model: Any, optimizer: Any) -> dict[str, set[Any]]:
    """The dtypes of the trainable parameters, their gradients and the optimizer's state (for checks and tests)."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    states = {
        v.dtype
        for p in trainable
        for v in optimizer.state.get(p, {}).values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    }
    return {
        "params": {p.dtype for p in trainable},
        "grads": {p.grad.dtype for p in trainable if p.grad is not None},
        "optimizer": states,
    }
