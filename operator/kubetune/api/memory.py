"""GPU-fit estimate: will this FineTuneJob fit in the memory of one GPU?

Pure arithmetic over the model shape (parameters, layers, hidden size), the method,
quantization, LoRA rank, cutoff, batch, ZeRO stage and offload. Used at validation time
(when ``spec.model.parameters`` and ``spec.resources.gpuType`` are given) and by the
trainer's preflight with the model's real ``config.json``, before any weight is loaded.

Bytes per parameter of the model states follow the usual accounting (and LLaMA-Factory's
published table): mixed-precision full fine-tuning keeps fp32 master weights, fp32 grads
and two fp32 Adam moments next to a 16-bit copy (18 B/param); LoRA/freeze keep frozen
16-bit weights (2 B/param) plus full states for the few trainable parameters; QLoRA stores
4-bit (0.5 B/param) or 8-bit weights. Activations are estimated per token and layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

GIB = 1024**3

# Memory per device (GiB) of common data-centre GPUs, by the name used in spec.resources.gpuType.
GPU_MEMORY_GIB: dict[str, float] = {
    "H200": 141, "H100": 80, "H100-80GB": 80, "H800": 80, "A100": 80, "A100-80GB": 80, "A100-40GB": 40,
    "A800": 80, "L40S": 48, "L40": 48, "A6000": 48, "A10G": 24, "A10": 24, "L4": 24, "RTX4090": 24,
    "V100": 32, "V100-16GB": 16, "V100-32GB": 32, "T4": 16, "MI300X": 192, "MI250": 128, "B200": 180,
}
CUDA_OVERHEAD_GIB = 1.5  # context, allocator fragmentation, kernels


@dataclass(frozen=True)
class ModelShape:
    parameters: float
    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face config.json (Llama-like decoder: Llama, Mistral, Qwen, Gemma, Phi-3…)."""
        text = config.get("text_config", config)
        h = int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model"))
        layers = int(text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers"))
        inter = int(text.get("intermediate_size") or text.get("n_inner") or 4 * h)
        vocab = int(text.get("vocab_size", 32000))
        heads = int(text.get("num_attention_heads") or text.get("n_head") or max(1, h // 128))
        kv = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or h // heads)
        attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
        mlp = 3 * h * inter
        tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
        params = layers * (attn + mlp + 2 * h) + vocab * h * (1 if tied else 2) + h
        return cls(float(params), layers, h, inter, vocab)

    @classmethod
    def from_parameters(cls, parameters: float) -> ModelShape:
        """A Llama-shaped guess from the parameter count alone (validation before the model is fetched)."""
        layers = max(2, round(32 * (parameters / 7e9) ** 0.3))
        hidden = int(max(256, math.sqrt(parameters / (12 * layers))) // 64 * 64)
        return cls(parameters, layers, hidden, int(hidden * 2.7), 32000)


MAX_PARAMETERS = 1e15  # a quadrillion: far past any model, and far from float overflow


def parse_parameters(text: str) -> float:
    """'7B', '135M', '1.5b', '70e9' → a number of parameters; ValueError (never OverflowError) otherwise."""
    shown = repr(text) if len(text) <= 40 else repr(text[:39] + "…")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMbBtT]?)\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{shown} is not a parameter count like 7B, 135M or 1.5B")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2).lower()]
    value = float(match.group(1)) * scale
    if not math.isfinite(value) or value > MAX_PARAMETERS:
        raise ValueError(f"{shown} is out of range; give the parameter count like 7B or 70B")
    if value < 1:
        raise ValueError(f"{shown} must be at least one parameter")
    return value


def gpu_memory_gib(gpu_type: str | None) -> float | None:
    if not gpu_type:
        return None
    key = gpu_type.upper().replace(" ", "").replace("_", "-").removeprefix("NVIDIA-")
    if key in GPU_MEMORY_GIB:
        return GPU_MEMORY_GIB[key]
    found = re.search(r"(\d+)\s*G(I)?B", key)
    if found:
        return float(found.group(1))
    family = key.split("-")[0]
    return GPU_MEMORY_GIB.get(family)


@dataclass(frozen=True)
class Estimate:
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.gradients_gib + self.optimizer_gib + self.activations_gib + self.overhead_gib

    def describe(self) -> str:
        return (f"~{self.total_gib:.1f} GiB per GPU (weights {self.weights_gib:.1f}, gradients {self.gradients_gib:.1f}, "
                f"optimizer {self.optimizer_gib:.1f}, activations {self.activations_gib:.1f}, overhead {self.overhead_gib:.1f})")


def lora_parameters(shape: ModelShape, rank: int) -> float:
    """LoRA on every linear layer of every decoder layer (q, k, v, o, gate, up, down)."""
    h, i = shape.hidden, shape.intermediate
    per_layer = rank * ((h + h) * 4 + (h + i) * 3)
    return float(shape.layers * per_layer)


def estimate(
    shape: ModelShape,
    *,
    method: str,
    bits: int | None = None,
    lora_rank: int = 8,
    freeze_layers: int = 2,
    cutoff_len: int = 1024,
    batch_size: int = 1,
    gradient_checkpointing: bool = False,
    world_size: int = 1,
    zero_stage: int = 0,
    offload: bool = False,
    pure_bf16: bool = False,
) -> Estimate:
    n = shape.parameters
    world = max(1, world_size)
    if method == "full":
        trainable = n
        weight_bytes = 2 if pure_bf16 else 6  # 16-bit copy (+ fp32 master weights under AMP)
        grad_bytes = 2 if pure_bf16 else 4
        optim_bytes = 4 if pure_bf16 else 8
        weights, grads, optim = n * weight_bytes, trainable * grad_bytes, trainable * optim_bytes
    else:
        if method == "freeze":
            trainable = n * min(1.0, abs(freeze_layers) / shape.layers)
        else:
            trainable = lora_parameters(shape, lora_rank)
        frozen_bytes = {4: 0.5, 8: 1.0, 2: 0.25}.get(bits or 16, 2.0)
        weights = n * frozen_bytes + trainable * 4
        grads, optim = trainable * 4, trainable * 8
    if zero_stage >= 1:
        optim /= world
    if zero_stage >= 2:
        grads /= world
    if zero_stage >= 3:
        weights /= world
    if offload:
        optim = 0.0
        if zero_stage >= 3:
            weights = 0.0
    tokens = batch_size * cutoff_len
    # bytes per token and layer: ~34·h in 16 bit without recomputation (Korthikanti et al.), ~2·h with it
    per_token_layer = (2 if gradient_checkpointing else 34) * shape.hidden
    activations = tokens * shape.layers * per_token_layer + tokens * shape.vocab * 4  # + fp32 logits
    return Estimate(weights / GIB, grads / GIB, optim / GIB, activations / GIB, CUDA_OVERHEAD_GIB)


def estimate_for_spec(spec: Any, shape: ModelShape) -> Estimate:
    """The estimate for a FineTuneJobSpec (kept untyped here to avoid an import cycle)."""
    quant = spec.quantization
    dist = spec.distributed
    zero = dist.zero_stage if dist.strategy == "deepspeed" else (3 if dist.strategy == "fsdp" else 0)
    method = "lora" if spec.method.type in ("lora", "qlora") else spec.method.type
    return estimate(
        shape,
        method=method,
        bits=quant.bits if quant else None,
        lora_rank=spec.method.lora.rank,
        freeze_layers=spec.method.freeze.trainable_layers,
        cutoff_len=spec.training.cutoff_len,
        batch_size=spec.training.batch_size,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        world_size=spec.world_size,
        zero_stage=zero,
        offload=dist.offload,
    )


def fit_problem(spec: Any, shape: ModelShape) -> str | None:
    """A message when the job cannot fit ``spec.resources.gpuType``, else None."""
    capacity = gpu_memory_gib(spec.resources.gpu_type)
    if capacity is None or spec.resources.gpus_per_node == 0:
        return None
    est = estimate_for_spec(spec, shape)
    if est.total_gib <= capacity:
        return None
    hints = []
    if spec.method.type == "full":
        hints.append("method lora or qlora")
    elif spec.quantization is None:
        hints.append("method qlora (4-bit base weights)")
    if not spec.training.gradient_checkpointing:
        hints.append("training.gradientCheckpointing: true")
    if not (spec.distributed.strategy == "deepspeed" and spec.distributed.zero_stage == 3):
        hints.append("distributed.strategy deepspeed with zeroStage 3 (and offload)")
    hints.append("more GPUs (resources.nodes / gpusPerNode) or a bigger gpuType")
    return (f"needs {est.describe()}, more than the {capacity:g} GiB of a {spec.resources.gpu_type}; "
            f"try {', or '.join(hints)}")
