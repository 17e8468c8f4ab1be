"""GPU-fit estimate: will this FineTuneJob fit in the memory of one GPU?

Pure arithmetic over the model shape (parameters, layers, hidden size, vocabulary), the method,
precision, quantization, LoRA rank, cutoff, batch and the distribution strategy. Used at
validation time (``spec.model.parameters`` and ``spec.resources.gpuType``; the vocabulary then
comes from the model's family name, or from its ``config.json`` when ``kubetune run`` can see it)
and by the trainer's preflight with the model's real ``config.json``, before any weight is loaded.

It counts what kubetune's trainer allocates (:mod:`kubetune.trainer.models.precision`):

* mixed precision (bf16/fp16) keeps every trainable parameter in fp32 (4 B) with fp32 gradients
  (4 B) and two fp32 Adam moments (8 B); autocast holds a 16-bit copy of it during the step (2 B):
  18 B per trainable parameter. Frozen weights stay 16-bit (2 B); fp32 training drops the copy.
* QLoRA stores the decoder's linear weights in 4 (or 8) bits; ``prepare_model_for_kbit_training``
  upcasts the rest (embeddings, head, norms) to fp32.
* DeepSpeed ZeRO-2/3 follows DeepSpeed's own accounting (its ``estimate_zero2/3_model_states_mem_needs``,
  checked in the tests): 16-bit parameters, fp32 master weights, gradients and moments partitioned
  over the ranks, the largest layer gathered under ZeRO-3, nothing but that with offload.
* FSDP keeps fp32 shards of parameters, gradients and moments, and gathers one 16-bit unit at a time.
* Logits are computed only for trained positions, in 16 bit, upcast to fp32 for the loss and its
  gradient (10 B per position and vocabulary entry); activations ~34·h bytes per token and layer
  (2·h with gradient checkpointing, Korthikanti et al.).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

GIB = 1024**3

# Memory per device (GiB) of common data-centre GPUs, by the name used in spec.resources.gpuType.
GPU_MEMORY_GIB: dict[str, float] = {
    "H200": 141,
    "H100": 80,
    "H100-80GB": 80,
    "H800": 80,
    "A100": 80,
    "A100-80GB": 80,
    "A100-40GB": 40,
    "A800": 80,
    "L40S": 48,
    "L40": 48,
    "A6000": 48,
    "A10G": 24,
    "A10": 24,
    "L4": 24,
    "RTX4090": 24,
    "V100": 32,
    "V100-16GB": 16,
    "V100-32GB": 32,
    "T4": 16,
    "MI300X": 192,
    "MI250": 128,
    "B200": 180,
}
CUDA_OVERHEAD_GIB = 1.5  # context, allocator fragmentation, kernels


@dataclass(frozen=True)
class ModelShape:
    parameters: float
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    tied: bool = False
    kv_hidden: int = 0  # width of the k and v projections (grouped-query attention); 0: as wide as hidden

    @property
    def embedding(self) -> float:
        """Parameters of the input embedding and the LM head (one matrix when tied)."""
        return float(self.vocab * self.hidden * (1 if self.tied else 2))

    @property
    def largest_layer(self) -> float:
        """Parameters of the largest single module (what ZeRO-3/FSDP gather at once): the embedding or an MLP matrix."""
        return float(max(self.vocab * self.hidden, self.hidden * self.intermediate))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face config.json (Llama-like decoder: Llama, Mistral, Qwen, Gemma, Phi-3…)."""
        text = config.get("text_config", config)
        h = int(text.get("hidden_size") or text.get("n_embd") or text.get("d_model"))
        layers = int(text.get("num_hidden_layers") or text.get("n_layer") or text.get("num_layers"))
        inter = int(text.get("intermediate_size") or text.get("n_inner") or 4 * h)
        vocab = int(text.get("vocab_size") or config.get("vocab_size") or 32000)
        heads = int(text.get("num_attention_heads") or text.get("n_head") or max(1, h // 128))
        kv = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or h // heads)
        attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
        mlp = 3 * h * inter
        tied = bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
        params = layers * (attn + mlp + 2 * h) + vocab * h * (1 if tied else 2) + h
        return cls(float(params), layers, h, inter, vocab, tied, kv * head_dim)

    @classmethod
    def from_parameters(cls, parameters: float, vocab: int = 32000) -> ModelShape:
        """A Llama-shaped guess from the parameter count alone (validation before the model is fetched)."""
        layers = max(2, round(32 * (parameters / 7e9) ** 0.3))
        hidden = int(max(256, math.sqrt(parameters / (12 * layers))) // 64 * 64)
        return cls(parameters, layers, hidden, int(hidden * 2.7), vocab)

    @classmethod
    def for_model(cls, source: str, parameters: str | None) -> ModelShape | None:
        """The best shape visible before the model is fetched: its ``config.json`` for a local ``file://`` folder,
        else a guess from ``parameters`` with the vocabulary of the family the source names (None without either)."""
        config = _local_config(source)
        if config is not None:
            try:
                return cls.from_config(config)
            except (KeyError, TypeError, ValueError):
                pass
        if not parameters:
            return None
        return cls.from_parameters(parse_parameters(parameters), vocab_for_source(source))


# Vocabulary sizes of the common families, matched in the model source (hf://Qwen/Qwen2.5-7B-Instruct, ...).
FAMILY_VOCAB: tuple[tuple[str, int], ...] = (
    (r"qwen(2|3)", 151936),
    (r"qwen", 151936),
    (r"llama-?3", 128256),
    (r"gemma-?3", 262208),
    (r"gemma", 256000),
    (r"mistral-nemo|nemo", 131072),
    (r"mi[sx]tral", 32768),
    (r"phi-?4", 100352),
    (r"phi-?3", 32064),
    (r"deepseek", 129280),
    (r"smollm", 49152),
    (r"gpt-oss", 201088),
    (r"olmo", 100352),
    (r"llama-?2", 32000),
)


def vocab_for_source(source: str, default: int = 32000) -> int:
    name = source.lower()
    for pattern, vocab in FAMILY_VOCAB:
        if re.search(pattern, name):
            return vocab
    return default


def _local_config(source: str) -> dict[str, Any] | None:
    import json
    from pathlib import Path

    if not source.startswith("file:///"):
        return None
    path = Path(source.removeprefix("file://")) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


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
        return (
            f"~{self.total_gib:.1f} GiB per GPU (weights {self.weights_gib:.1f}, gradients {self.gradients_gib:.1f}, "
            f"optimizer {self.optimizer_gib:.1f}, activations {self.activations_gib:.1f}, overhead {self.overhead_gib:.1f})"
        )


def lora_parameters(shape: ModelShape, rank: int) -> float:
    """LoRA on every linear layer of every decoder layer (q, k, v, o, gate, up, down); k and v as wide as the
    grouped-query attention makes them."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_hidden or shape.hidden
    per_layer = rank * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
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
    mixed_precision: bool = True,
    strategy: str | None = None,
) -> Estimate:
    """Bytes per GPU, split into weights, gradients, optimizer states, activations (see the module docstring).

    ``strategy``: ``ddp`` (or ``single``), ``fsdp`` or ``deepspeed`` (``zero_stage`` 1-3); ``None`` infers
    ``deepspeed`` from a non-zero ``zero_stage``. ``pure_bf16``: 16-bit weights and states, no fp32 masters.
    """
    n = shape.parameters
    world = max(1, world_size)
    strategy = strategy or ("deepspeed" if zero_stage else "ddp")
    if method == "full":
        trainable = n
    elif method == "freeze":
        trainable = (n - shape.embedding) * min(1.0, abs(freeze_layers) / shape.layers)
    else:
        trainable = lora_parameters(shape, lora_rank)
    frozen = n - trainable if method in ("full", "freeze") else n  # LoRA weights come on top of the model
    half = 2.0 if (mixed_precision or pure_bf16) else 4.0
    if bits:
        # quantized linear weights; prepare_model_for_kbit_training upcasts embeddings, head and norms to fp32
        frozen_bytes = (frozen - shape.embedding) * {4: 0.5, 8: 1.0, 2: 0.25}.get(bits, 2.0) + shape.embedding * 4
    else:
        frozen_bytes = frozen * half
    master, copy = (2.0, 0.0) if pure_bf16 else (4.0, 2.0 if mixed_precision else 0.0)
    grad_bytes, optim_bytes = (2.0, 4.0) if pure_bf16 else (4.0, 8.0)
    t = trainable
    if strategy == "deepspeed" and zero_stage >= 3:
        # DeepSpeed: largest layer gathered (4 B/param) + 18 B/param partitioned; with offload only the layer
        largest = 4 * shape.largest_layer
        if offload:
            weights, grads, optim = largest, 0.0, 0.0
        else:
            weights, grads, optim = largest + frozen_bytes / world + 6 * t / world, 4 * t / world, 8 * t / world
    elif strategy == "deepspeed" and zero_stage >= 1:
        # DeepSpeed ZeRO-1/2: 16-bit weights on every rank + 18 B/param partitioned; with offload only the weights
        if offload:
            weights, grads, optim = frozen_bytes + 2 * t, 0.0, 0.0
        else:
            weights, grads, optim = frozen_bytes + 2 * t + 4 * t / world, 6 * t / world, 8 * t / world
    elif strategy == "fsdp":
        gathered = half * shape.largest_layer
        if offload:
            weights, grads, optim = gathered, 0.0, 0.0
        else:
            weights = gathered + (frozen_bytes + (master + copy) * t) / world
            grads, optim = grad_bytes * t / world, optim_bytes * t / world
    else:
        weights, grads, optim = frozen_bytes + (master + copy) * t, grad_bytes * t, optim_bytes * t
    tokens = batch_size * cutoff_len
    per_token_layer = (2 if gradient_checkpointing else 34) * shape.hidden
    logits = tokens * shape.vocab * (10 if half == 2.0 else 8)  # 16-bit logits, fp32 upcast and its gradient
    activations = tokens * shape.layers * per_token_layer * half / 2 + logits
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
        mixed_precision=spec.training.precision != "fp32",
        strategy={"deepspeed": "deepspeed", "fsdp": "fsdp"}.get(dist.strategy, "ddp"),
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
    return (
        f"needs {est.describe()}, more than the {capacity:g} GiB of a {spec.resources.gpu_type}; "
        f"try {', or '.join(hints)}"
    )
