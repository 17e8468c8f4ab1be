"""Single-GPU fine-tuning throughput and MFU of kubetune's own trainer, on random-weight Llama shapes.

    bash bench/gpu.sh OUTDIR            # the entry point (8-minute budget; writes OUTDIR/gpu.json and gpu.md)
    bash bench/gpu.sh OUTDIR --smoke    # the same product path on the tiny shape, on CPU (make test runs it)

**What runs.** For each case the script writes a local random-weight model folder (Llama-3.2-1B or
Llama-3.1-8B shape, a word-level tokenizer, nothing downloaded), a synthetic pt dataset and a
FineTuneJob, and trains it through ``kubetune.trainer.runner.run`` -- the code a training pod runs: data
conversion, tokenization, packing or padding-free batches, the LM head on trained positions only, the
kernel switches (``training.attention``, ``training.kernels``), the callbacks and the artifact with its
manifest. Each case is a fresh subprocess so GPU memory starts empty. A step clock (a TrainerCallback
that synchronises CUDA) times the optimizer steps after the warm-up ones.

**Ceiling.** The same shapes also run through a bare PyTorch loop (one fixed batch, no data pipeline, no
Trainer) -- the figure kubetune's path is compared with.

**MFU**, two conventions side by side:

* ``mfu``: tokens/s x FLOPs per token / peak, with 6N FLOPs per token for full fine-tuning and
  4N + 6N_lora for LoRA (forward 2N, backward through frozen weights 2N, adapter forward+backward+weight
  gradients 6N_lora); N counts the parameters used in matmuls (no embedding lookup; a tied head once);
  attention score FLOPs left out.
* ``mfu_nemo``: the Megatron-style count NeMo AutoModel publishes for Llama models (its ``llama3_flops``),
  which includes attention and counts every weight as trained even for LoRA, per token:
  ``L*h^2*(12 + 12*g/a + 18*f/h + 12*s/h) + 6*h*V`` (L layers, h hidden, g KV heads, a heads, f FFN size,
  s sequence length, V vocabulary). Use it to compare with NeMo's published LoRA figures (e.g. 40.6 % for
  Llama-3.1-8B LoRA on one H100).

Peak: 989 TFLOP/s (dense bf16, H100/H200 SXM) unless ``--peak-tflops`` says otherwise. If LLaMA-Factory is
importable, the 1B LoRA padded case also runs through ``llamafactory-cli train`` side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.trainer.callbacks import throughput  # the trainer's own MFU arithmetic, as its metrics report it

DEFAULT_PEAK_TFLOPS = 989.0

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B and Llama-3.1-8B shapes
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "head_dim": 64,
    },
    "8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "head_dim": 128,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "tie_word_embeddings": True,
        "head_dim": 16,
    },
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ------------------------------------------------------------------------------------------- pure math


def matmul_params(shape: dict[str, Any]) -> int:
    """Parameters that take part in matmuls for one token: decoder linears + LM head (no embedding lookup)."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = shape.get("head_dim") or h // shape["num_attention_heads"]
    q = h * shape["num_attention_heads"] * head_dim
    kv = 2 * h * shape["num_key_value_heads"] * head_dim
    o = shape["num_attention_heads"] * head_dim * h
    mlp = 3 * h * i
    return layers * (q + kv + o + mlp) + h * shape["vocab_size"]


def lora_params(shape: dict[str, Any], rank: int, targets: list[str] = LORA_TARGETS) -> int:
    """LoRA A and B parameters: r x (in + out) per adapted linear."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = shape.get("head_dim") or h // shape["num_attention_heads"]
    dims = {
        "q_proj": (h, shape["num_attention_heads"] * head_dim),
        "k_proj": (h, shape["num_key_value_heads"] * head_dim),
        "v_proj": (h, shape["num_key_value_heads"] * head_dim),
        "o_proj": (shape["num_attention_heads"] * head_dim, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    return layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)


def flops_per_token(method: str, n: int, n_lora: int = 0) -> float:
    """6N for full fine-tuning; 4N + 6N_lora for LoRA (N frozen, N_lora trained: the trainer's count)."""
    if method == "full":
        return throughput.flops_per_token(total_params=n, trainable_params=n)
    if method == "lora":
        return throughput.flops_per_token(total_params=n + n_lora, trainable_params=n_lora)
    raise ValueError(f"unknown method {method!r}; expected full or lora")


def mfu(tokens_per_s: float, per_token_flops: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation of one device as a fraction of its peak (the trainer's :func:`throughput.mfu`)."""
    if peak_tflops <= 0:
        raise ValueError("peak_tflops must be > 0")
    return throughput.mfu(tokens_per_s, per_token_flops, peak_tflops * 1e12, devices=1)


def nemo_flops_per_token(shape: dict[str, Any], seq_len: float) -> float:
    """Megatron/NeMo's Llama training FLOPs per token (attention included, every weight counted as trained)."""
    h, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads, groups, vocab = shape["num_attention_heads"], shape["num_key_value_heads"], shape["vocab_size"]
    return layers * h * h * (12 + 12 * groups / heads + 18 * f / h + 12 * seq_len / h) + 6 * h * vocab


def peak_for(device_name: str, override: float | None = None) -> tuple[float, str]:
    if override:
        return override, "--peak-tflops"
    peak = throughput.peak_flops(device_name)  # the table the trainer's MFU metric uses
    if peak > 0:
        return peak / 1e12, f"table ({device_name}, dense bf16)"
    return DEFAULT_PEAK_TFLOPS, "default (H100/H200 dense bf16; device not in table)"


def sequence_lengths(count: int, cutoff: int, seed: int = 0) -> list[int]:
    """Deterministic, skewed lengths like instruction data: many short, some long, capped at cutoff."""
    rng = random.Random(seed)
    return [max(16, min(cutoff, int(rng.lognormvariate(math.log(cutoff / 5), 0.8)))) for _ in range(count)]


def padded_positions(lengths: list[int], multiple: int = 8) -> int:
    longest = int(math.ceil(max(lengths) / multiple) * multiple)
    return longest * len(lengths)


# ------------------------------------------------------------------------------------------- runs


@dataclass
class Case:
    shape: str
    method: str  # lora | full
    packed: bool
    batch: int
    cutoff: int
    steps: int
    warmup: int
    grad_ckpt: bool = False


def build_batch(lengths: list[int], vocab: int, packed: bool, device: Any) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, vocab, (n,), generator=g) for n in lengths]
    if packed:
        ids = torch.cat(seqs)[None]
        pos = torch.cat([torch.arange(n) for n in lengths])[None]
        labels = ids.clone()
        labels[pos == 0] = -100  # no loss across a sequence boundary
        return {"input_ids": ids.to(device), "position_ids": pos.to(device), "labels": labels.to(device)}
    longest = int(math.ceil(max(lengths) / 8) * 8)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
        mask[row, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def run_case(case: Case, *, device: str, dtype_name: str, attn: str, peak: float, rank: int) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    shape = SHAPES[case.shape]
    config = LlamaConfig(**shape, max_position_embeddings=max(4096, case.cutoff), attn_implementation=attn)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    build_s = time.perf_counter() - started
    if case.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    n_lora = 0
    if case.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"
            ),
        )
        n_lora = throughput.count_parameters(model)[1]
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.startswith("cuda")
    optim = torch.optim.AdamW(params, lr=1e-5, fused=fused) if fused else torch.optim.AdamW(params, lr=1e-5)
    lengths = sequence_lengths(case.batch, case.cutoff)
    batch = build_batch(lengths, shape["vocab_size"], case.packed, device)
    tokens = sum(lengths)

    def step() -> float:
        out = model(**batch)
        out.loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for _ in range(case.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    loss = None
    for _ in range(case.steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - t0) / case.steps
    n = matmul_params(shape)
    per_token = flops_per_token(case.method, n, n_lora)
    tps = tokens / step_s
    result = {
        "shape": case.shape,
        "method": case.method,
        "packed": case.packed,
        "batch_rows": case.batch,
        "cutoff": case.cutoff,
        "grad_checkpointing": case.grad_ckpt,
        "non_padding_tokens_per_step": tokens,
        "computed_positions_per_step": tokens if case.packed else padded_positions(lengths),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(tps, 1),
        "params_matmul": n,
        "params_lora": n_lora,
        "flops_per_token": per_token,
        "mfu": round(mfu(tps, per_token, peak), 4),
        "loss": loss,
        "build_s": round(build_s, 2),
        "steps_timed": case.steps,
    }
    if device.startswith("cuda"):
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result  # the model and optimizer go with this frame; main() empties the CUDA cache


# ------------------------------------------------------------------------------------------- the product path


@dataclass
class ProductCase:
    """One FineTuneJob run through kubetune's trainer."""

    shape: str
    method: str  # lora | full
    packed: bool
    batch: int
    cutoff: int
    steps: int  # timed optimizer steps
    warmup: int  # untimed steps first
    attention: str = "auto"
    kernels: tuple[str, ...] = ()
    grad_ckpt: bool = False

    @property
    def name(self) -> str:
        extra = "-".join(self.kernels)
        return (
            f"{self.shape}-{self.method}-{'packed' if self.packed else 'padded'}-{self.attention}"
            + (f"-{extra}" if extra else "")
        ).replace("_", "")


def word_tokenizer(vocab_size: int) -> Any:
    """One word = one token over a synthetic vocabulary, so row lengths are exact and nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(vocab_size - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def model_folder(shape_name: str, root: Path, *, device: str, cutoff: int) -> Path:
    """A random-weight model folder of the given shape (built once per run of the script)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = root / f"model-{shape_name}"
    if (folder / "config.json").exists():
        return folder
    shape = SHAPES[shape_name]
    config = LlamaConfig(
        **shape, max_position_embeddings=max(4096, cutoff), bos_token_id=1, eos_token_id=2, pad_token_id=0
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    word_tokenizer(shape["vocab_size"]).save_pretrained(tmp)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    tmp.rename(folder)
    return folder


def write_product_job(case: ProductCase, root: Path, model: Path, *, device: str) -> Path:
    """The synthetic dataset and the FineTuneJob for one case; returns the job file."""
    import yaml

    shape = SHAPES[case.shape]
    rng = random.Random(0)
    rows_needed = case.batch * (case.steps + case.warmup) * (8 if case.packed else 1) + case.batch
    lengths = sequence_lengths(rows_needed, case.cutoff)
    data = root / f"data-{case.shape}-{case.cutoff}.jsonl"
    if not data.exists():
        with data.open("w") as fh:
            for n in lengths:
                fh.write(
                    json.dumps(
                        {"text": " ".join(f"w{rng.randrange(shape['vocab_size'] - 3)}" for _ in range(max(1, n - 2)))}
                    )
                    + "\n"
                )
    training: dict[str, Any] = {
        "maxSteps": case.steps + case.warmup,
        "batchSize": case.batch,
        "cutoffLen": case.cutoff,
        "packing": case.packed,
        "learningRate": 1e-5,
        "loggingSteps": 1,
        "attention": case.attention,
        "kernels": list(case.kernels),
        "gradientCheckpointing": case.grad_ckpt,
        "precision": "bf16" if device == "cuda" else "fp32",
    }
    method: dict[str, Any] = {"type": case.method}
    if case.method == "lora":
        method["lora"] = {"rank": 16, "alpha": 32, "target": ["all"]}
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": case.name},
        "spec": {
            "stage": "pt",
            "model": {"source": f"file://{model}"},
            "datasets": [{"name": "synthetic", "source": f"file://{data}", "columns": {"prompt": "text"}}],
            "method": method,
            "training": training,
            "resources": {"gpusPerNode": 1 if device == "cuda" else 0},
            "output": {"uri": f"file://{root / 'out' / case.name}"},
        },
    }
    path = root / f"{case.name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def step_clock() -> Any:
    """A TrainerCallback noting (time, step, non-padding tokens seen) at every optimizer step's end."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.points: list[tuple[float, int, int]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.points.append((time.perf_counter(), state.global_step, int(state.num_input_tokens_seen)))

    return StepClock()


def timed_rate(points: list[tuple[float, int, int]], warmup: int) -> tuple[float, float]:
    """(tokens/s, seconds per step) over the steps after the first ``warmup`` ones."""
    timed = [p for p in points if p[1] >= warmup]
    if len(timed) < 2:
        raise ValueError(f"only {len(timed)} step(s) after {warmup} warm-up step(s); run more steps")
    (t0, s0, k0), (t1, s1, k1) = timed[0], timed[-1]
    return (k1 - k0) / (t1 - t0), (t1 - t0) / (s1 - s0)


def run_product_case(case: ProductCase, root: Path, *, peak: float) -> dict[str, Any]:
    """Train one FineTuneJob through kubetune's runner in this process and measure it."""
    import resource

    import torch

    from kubetune.api.v1alpha1 import FineTuneJob
    from kubetune.trainer.local import local_config
    from kubetune.trainer.runner import run

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_folder(case.shape, root, device=device, cutoff=case.cutoff)
    job_file = write_product_job(case, root, model, device=device)
    import yaml

    job = FineTuneJob.model_validate(yaml.safe_load(job_file.read_text()))
    config = local_config(job, job_file, cache_dir=root / "cache")
    clock = step_clock()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = run(config, callbacks=[clock])
    wall = time.perf_counter() - started
    tps, step_s = timed_rate(clock.points, case.warmup)
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    shape = SHAPES[case.shape]
    n = matmul_params(shape)
    n_lora = lora_params(shape, 16) if case.method == "lora" else 0
    per_token = flops_per_token(case.method, n, n_lora)
    tokens_per_step = tps * step_s
    seq = tokens_per_step / case.batch if not case.packed else sum(sequence_lengths(64, case.cutoff)) / 64
    row: dict[str, Any] = {
        "path": "kubetune",
        "case": case.name,
        "shape": case.shape,
        "method": case.method,
        "packed": case.packed,
        "batch_rows": case.batch,
        "cutoff": case.cutoff,
        "grad_checkpointing": case.grad_ckpt,
        "attention": manifest["job"]["kernels"]["attention"],
        "kernels": manifest["job"]["kernels"]["kernels"],
        "tokens_per_s": round(tps, 1),
        "step_s": round(step_s, 4),
        "steps_timed": case.steps,
        "mfu": round(mfu(tps, per_token, peak), 4),
        "mfu_nemo": round(mfu(tps, nemo_flops_per_token(shape, seq), peak), 4),
        "loss": manifest.get("metrics", {}).get("train_loss"),
        "wall_s": round(wall, 1),
    }
    if device == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return row


def product_subprocess(case: ProductCase, root: Path, *, peak: float, timeout_s: float) -> dict[str, Any]:
    """run_product_case in a fresh interpreter (GPU memory starts empty); its last stdout line is the row."""
    env = dict(os.environ, KUBETUNE_CACHE_DIR=str(root / "cache"))
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--product-case",
        json.dumps(case.__dict__),
        "--work",
        str(root),
        "--peak-tflops",
        str(peak),
        "--out",
        str(root),
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(30.0, timeout_s), check=False)
    except subprocess.TimeoutExpired:
        return {
            "path": "kubetune",
            "case": case.name,
            "shape": case.shape,
            "method": case.method,
            "packed": case.packed,
            "error": f"over its time budget ({timeout_s:.0f} s)",
        }
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-600:].strip().splitlines()
        return {
            "path": "kubetune",
            "case": case.name,
            "shape": case.shape,
            "method": case.method,
            "packed": case.packed,
            "error": f"exit {proc.returncode}: {tail[-1] if tail else ''}"[:400],
        }
    return json.loads(lines[-1])


def product_plan(smoke: bool) -> list[ProductCase]:
    if smoke:
        return [
            ProductCase("tiny", "lora", False, batch=4, cutoff=64, steps=2, warmup=1),
            ProductCase("tiny", "lora", True, batch=2, cutoff=64, steps=2, warmup=1, kernels=("chunked_loss",)),
            ProductCase("tiny", "full", True, batch=2, cutoff=64, steps=2, warmup=1, attention="eager"),
        ]
    return [  # most telling first: the budget stops starting new cases
        ProductCase("1b", "lora", True, batch=4, cutoff=4096, steps=5, warmup=2),
        ProductCase("1b", "lora", False, batch=8, cutoff=4096, steps=5, warmup=2),
        ProductCase("8b", "lora", True, batch=2, cutoff=4096, steps=4, warmup=2),
        ProductCase("1b", "full", True, batch=4, cutoff=4096, steps=5, warmup=2),
        ProductCase("1b", "lora", True, batch=4, cutoff=4096, steps=5, warmup=2, attention="sdpa"),
        ProductCase("1b", "lora", True, batch=4, cutoff=4096, steps=5, warmup=2, kernels=("liger",)),
        ProductCase("1b", "lora", True, batch=4, cutoff=4096, steps=5, warmup=2, kernels=("chunked_loss",)),
        ProductCase("8b", "lora", False, batch=4, cutoff=4096, steps=4, warmup=2),
    ]


def llamafactory_case(case: Case, *, out: Path, attn: str, rank: int, budget_s: float) -> dict[str, Any]:
    """The 1B LoRA padded case through `llamafactory-cli train` (when LLaMA-Factory is importable)."""
    import importlib.util

    if importlib.util.find_spec("llamafactory") is None:
        return {"skipped": "llamafactory is not importable in this environment"}
    cli = shutil.which("llamafactory-cli") or str(Path(sys.executable).with_name("llamafactory-cli"))
    if not Path(cli).exists():
        return {"skipped": "llamafactory-cli not found"}
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    work = Path(tempfile.mkdtemp(prefix="lf-gpu-"))
    try:
        shape = SHAPES[case.shape]
        with torch.device("cuda"):
            model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=4096)).to(torch.bfloat16)
        model.save_pretrained(work / "model")
        del model
        torch.cuda.empty_cache()
        # A word-level tokenizer over a synthetic vocabulary: one word = one token, so row lengths are exact.
        vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(shape["vocab_size"] - 3)}}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
        hf_tok.save_pretrained(work / "model")
        rng = random.Random(0)
        lengths = sequence_lengths(case.batch * (case.steps + case.warmup), case.cutoff)
        rows = [
            {"text": " ".join(f"w{rng.randrange(shape['vocab_size'] - 3)}" for _ in range(n - 1))} for n in lengths
        ]
        (work / "data").mkdir()
        (work / "data" / "pt.json").write_text(json.dumps(rows))
        (work / "data" / "dataset_info.json").write_text(
            json.dumps({"synthetic": {"file_name": "pt.json", "columns": {"prompt": "text"}}})
        )
        cfg = {
            "model_name_or_path": str(work / "model"),
            "stage": "pt",
            "do_train": True,
            "finetuning_type": "lora",
            "lora_rank": rank,
            "lora_alpha": 2 * rank,
            "lora_target": "all",
            "dataset": "synthetic",
            "dataset_dir": str(work / "data"),
            "template": "empty",
            "cutoff_len": case.cutoff,
            "packing": False,
            "output_dir": str(work / "out"),
            "per_device_train_batch_size": case.batch,
            "bf16": True,
            "max_steps": case.steps + case.warmup,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": "none",
            "flash_attn": "sdpa" if attn == "sdpa" else "fa2",
            "overwrite_cache": True,
        }
        import yaml

        (work / "lf.yaml").write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, DISABLE_VERSION_CHECK="1", HF_HUB_OFFLINE="1", WANDB_DISABLED="true")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [cli, "train", str(work / "lf.yaml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=max(30.0, budget_s),
            check=False,
        )
        wall = time.perf_counter() - t0
        results = work / "out" / "train_results.json"
        if proc.returncode != 0 or not results.exists():
            return {"failed": proc.returncode, "tail": (proc.stdout + proc.stderr)[-2000:]}
        metrics = json.loads(results.read_text())
        tokens = sum(lengths)
        return {
            "train_runtime_s": metrics.get("train_runtime"),
            "wall_s": round(wall, 1),
            "tokens_per_s_incl_warmup": round(tokens / metrics["train_runtime"], 1),
            "note": "includes its first (warm-up) steps; compare with kubetune-path tokens/s as an upper bound",
        }
    except subprocess.TimeoutExpired:
        return {"skipped": f"over its time budget ({budget_s:.0f} s)"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plan(smoke: bool) -> list[Case]:
    """The bare-loop ceiling: the same shapes with no data pipeline and no Trainer."""
    if smoke:
        return [Case("tiny", "lora", p, batch=4, cutoff=64, steps=2, warmup=1) for p in (False, True)]
    return [
        Case("1b", "lora", True, batch=4, cutoff=4096, steps=5, warmup=2),
        Case("1b", "lora", False, batch=8, cutoff=4096, steps=5, warmup=2),
        Case("8b", "lora", True, batch=2, cutoff=4096, steps=4, warmup=2),
        Case("1b", "full", True, batch=4, cutoff=4096, steps=5, warmup=2),
    ]


def with_ceiling(rows: list[dict[str, Any]], ceiling: list[dict[str, Any]]) -> None:
    """Each product row gets the bare loop's tokens/s for the same shape, method and batch kind, and the ratio."""
    best = {(c["shape"], c["method"], c["packed"]): c["tokens_per_s"] for c in ceiling if "tokens_per_s" in c}
    for row in rows:
        bare = best.get((row.get("shape"), row.get("method"), row.get("packed")))
        if bare and "tokens_per_s" in row:
            row["bare_tokens_per_s"] = bare
            row["of_ceiling"] = round(row["tokens_per_s"] / bare, 3)


def render(result: dict[str, Any]) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchlib

    def rows(key: str) -> list[dict[str, Any]]:
        return [
            dict(r, packed="packed" if r.get("packed") else "padded", kernels=",".join(r.get("kernels") or []) or "-")
            for r in result.get(key, [])
        ]

    mem = "peak_mem_gib" if not result["smoke"] else "peak_rss_gib"
    product = benchlib.markdown_table(
        rows("cases"),
        [
            ("shape", "shape"),
            ("method", "method"),
            ("packed", "batch"),
            ("attention", "attention"),
            ("kernels", "kernels"),
            ("tokens_per_s", "non-padding tokens/s"),
            ("step_s", "step s"),
            ("mfu", "MFU"),
            ("mfu_nemo", "MFU (NeMo formula)"),
            (mem, "peak GiB"),
            ("of_ceiling", "of bare loop"),
            ("error", "error"),
        ],
    )
    ceiling = benchlib.markdown_table(
        rows("ceiling"),
        [
            ("shape", "shape"),
            ("method", "method"),
            ("packed", "batch"),
            ("tokens_per_s", "non-padding tokens/s"),
            ("step_s", "step s"),
            ("mfu", "MFU"),
            ("peak_mem_gib", "peak GiB"),
            ("error", "error"),
        ],
    )
    env = result["environment"]
    return (
        "# GPU fine-tuning throughput and MFU of kubetune's trainer (random-weight Llama shapes)\n\n"
        f"`bash bench/gpu.sh OUTDIR` on {env.get('device')} -- peak {result['peak_tflops']} TFLOP/s "
        f"({result['peak_source']}); dtype {env.get('dtype')}"
        f"{' -- SMOKE RUN (tiny model, CPU): numbers mean nothing' if result['smoke'] else ''}.\n\n"
        "## kubetune's trainer (a FineTuneJob through kubetune.trainer.runner.run, as in a pod)\n\n"
        f"{product}\n## Ceiling: a bare PyTorch loop on one fixed batch\n\n{ceiling}\n"
        f"LLaMA-Factory: {json.dumps(result.get('llamafactory'))}\n\n"
        "MFU: 6N (full) and 4N + 6N_lora (LoRA) FLOPs per non-padding token, attention excluded; MFU (NeMo "
        "formula): Megatron's Llama count with attention, every weight counted as trained.\n"
        f"Elapsed {result['elapsed_s']} s of a {result['budget_s']} s budget.\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="single-GPU LoRA/full fine-tuning tokens/s and MFU of kubetune")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the product path, not the GPU")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting new cases after this")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--skip-llamafactory", action="store_true")
    ap.add_argument("--product-case", help=argparse.SUPPRESS)  # internal: one case, in this process
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p = ap.parse_args(argv)
    if p.product_case:
        case = ProductCase(**{**json.loads(p.product_case), "kernels": tuple(json.loads(p.product_case)["kernels"])})
        print(json.dumps(run_product_case(case, p.work, peak=p.peak_tflops or DEFAULT_PEAK_TFLOPS)), flush=True)
        return 0
    started = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not p.smoke:
        print("gpu_bench: no CUDA device; use --smoke for the CPU-side check", file=sys.stderr)
        return 2
    device = "cuda" if cuda and not p.smoke else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)"
    attn = "sdpa"
    if device == "cuda":
        import importlib.util

        attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    peak, source = peak_for(name, p.peak_tflops)
    p.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="kubetune-gpu-bench-"))
    import peft
    import transformers

    result: dict[str, Any] = {
        "benchmark": "gpu",
        "smoke": p.smoke,
        "peak_tflops": peak,
        "peak_source": source,
        "budget_s": p.budget_s,
        "environment": {
            "device": name,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "attn_bare": attn,
            "dtype": dtype,
            "python": sys.version.split()[0],
        },
        "cases": [],
        "ceiling": [],
    }

    def left() -> float:
        return p.budget_s - (time.perf_counter() - started)

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        with_ceiling(result["cases"], result["ceiling"])
        (p.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (p.out / "gpu.md").write_text(render(result))

    try:
        # kubetune's own trainer first (75 % of the budget), then the bare loop, then LLaMA-Factory
        for pcase in product_plan(p.smoke):
            if not p.smoke and left() < 0.25 * p.budget_s:
                result["cases"].append(
                    {
                        "case": pcase.name,
                        "shape": pcase.shape,
                        "method": pcase.method,
                        "packed": pcase.packed,
                        "error": "skipped: time budget spent",
                    }
                )
                continue
            print(f"gpu_bench: kubetune {pcase.name}", file=sys.stderr, flush=True)
            row = product_subprocess(pcase, work, peak=peak, timeout_s=left() if not p.smoke else 900.0)
            result["cases"].append(row)
            print(f"gpu_bench: {json.dumps(row)}", file=sys.stderr, flush=True)
            save()
        for case in plan(p.smoke):
            if left() < 0:
                result["ceiling"].append(
                    {
                        "shape": case.shape,
                        "method": case.method,
                        "packed": case.packed,
                        "error": "skipped: time budget spent",
                    }
                )
                continue
            print(f"gpu_bench: bare {case}", file=sys.stderr, flush=True)
            try:
                row = run_case(case, device=device, dtype_name=dtype, attn=attn, peak=peak, rank=p.rank)
            except Exception as exc:  # noqa: BLE001 - OOM or a kernel error: record it, go on with the other cases
                row = {
                    "shape": case.shape,
                    "method": case.method,
                    "packed": case.packed,
                    "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                }
            if device == "cuda":
                torch.cuda.empty_cache()
            result["ceiling"].append(row)
            save()
        if p.smoke or p.skip_llamafactory:
            result["llamafactory"] = {"skipped": "smoke run" if p.smoke else "--skip-llamafactory"}
        else:
            lf_case = Case("1b", "lora", False, batch=8, cutoff=4096, steps=5, warmup=2)
            result["llamafactory"] = (
                llamafactory_case(lf_case, out=p.out, attn=attn, rank=p.rank, budget_s=left())
                if left() > 60
                else {"skipped": "no time left in the budget"}
            )
        save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(result))
    failed = [r for r in result["cases"] if "error" in r and not r["error"].startswith("skipped")]
    return 1 if p.smoke and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
