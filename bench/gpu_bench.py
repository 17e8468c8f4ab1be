"""Single-GPU fine-tuning throughput and MFU on random-weight Llama shapes (1B and 8B), no network needed.

    bash bench/gpu.sh OUTDIR            # the entry point (8-minute budget; writes OUTDIR/gpu.json and gpu.md)
    python bench/gpu_bench.py --smoke --out /tmp/x   # CPU-side check with a tiny model (seconds)

Models are built from a config with random weights (nothing is downloaded). For each shape, LoRA
(r=16 on every linear layer but the head) and full fine-tuning run a few optimizer steps on the same
synthetic batch of variable-length sequences, twice: padded (a batch of rows padded to the longest)
and packed (the same rows concatenated padding-free, with position ids restarting per sequence, the
way kubetune's ``packing: true`` feeds TRL). Tokens/s counts non-padding tokens.

MFU = tokens/s x FLOPs per token / peak. FLOPs per token: 6N for full fine-tuning, 4N + 6N_lora for
LoRA (forward 2N, backward through the frozen weights 2N, adapter forward+backward+weight grads 6N_lora),
where N counts the parameters used in matmuls (the input embedding lookup is not one; a tied LM head is
counted once). Attention score FLOPs are left out, as in the 6N convention. Peak: 989 TFLOP/s (dense
bf16, H100/H200 SXM) unless ``--peak-tflops`` says otherwise.

If LLaMA-Factory is importable, the 1B LoRA padded case also runs through ``llamafactory-cli train``
for a side-by-side number; otherwise that part is skipped and says so.
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

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
DEFAULT_PEAK_TFLOPS = 989.0

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.2-1B and Llama-3.1-8B shapes
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True, "head_dim": 64},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "head_dim": 128},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True, "head_dim": 16},
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
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }
    return layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)


def flops_per_token(method: str, n: int, n_lora: int = 0) -> float:
    """6N for full fine-tuning; 4N + 6N_lora for LoRA."""
    if method == "full":
        return 6.0 * n
    if method == "lora":
        return 4.0 * n + 6.0 * n_lora
    raise ValueError(f"unknown method {method!r}; expected full or lora")


def mfu(tokens_per_s: float, per_token_flops: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation as a fraction of the peak."""
    if peak_tflops <= 0:
        raise ValueError("peak_tflops must be > 0")
    return tokens_per_s * per_token_flops / (peak_tflops * 1e12)


def peak_for(device_name: str, override: float | None = None) -> tuple[float, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in device_name.lower():
            return value, f"table ({key}, dense bf16)"
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

        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS,
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
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
        "shape": case.shape, "method": case.method, "packed": case.packed, "batch_rows": case.batch,
        "cutoff": case.cutoff, "grad_checkpointing": case.grad_ckpt, "non_padding_tokens_per_step": tokens,
        "computed_positions_per_step": tokens if case.packed else padded_positions(lengths),
        "step_s": round(step_s, 4), "tokens_per_s": round(tps, 1), "params_matmul": n, "params_lora": n_lora,
        "flops_per_token": per_token, "mfu": round(mfu(tps, per_token, peak), 4), "loss": loss,
        "build_s": round(build_s, 2), "steps_timed": case.steps,
    }
    if device.startswith("cuda"):
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result  # the model and optimizer go with this frame; main() empties the CUDA cache


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
        rows = [{"text": " ".join(f"w{rng.randrange(shape['vocab_size'] - 3)}" for _ in range(n - 1))}
                for n in lengths]
        (work / "data").mkdir()
        (work / "data" / "pt.json").write_text(json.dumps(rows))
        (work / "data" / "dataset_info.json").write_text(json.dumps(
            {"synthetic": {"file_name": "pt.json", "columns": {"prompt": "text"}}}))
        cfg = {
            "model_name_or_path": str(work / "model"), "stage": "pt", "do_train": True, "finetuning_type": "lora",
            "lora_rank": rank, "lora_alpha": 2 * rank, "lora_target": "all", "dataset": "synthetic",
            "dataset_dir": str(work / "data"), "template": "empty", "cutoff_len": case.cutoff, "packing": False,
            "output_dir": str(work / "out"), "per_device_train_batch_size": case.batch, "bf16": True,
            "max_steps": case.steps + case.warmup, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
            "flash_attn": "sdpa" if attn == "sdpa" else "fa2", "overwrite_cache": True,
        }
        import yaml

        (work / "lf.yaml").write_text(yaml.safe_dump(cfg))
        env = dict(os.environ, DISABLE_VERSION_CHECK="1", HF_HUB_OFFLINE="1", WANDB_DISABLED="true")
        t0 = time.perf_counter()
        proc = subprocess.run([cli, "train", str(work / "lf.yaml")], env=env, capture_output=True, text=True,
                              timeout=max(30.0, budget_s), check=False)
        wall = time.perf_counter() - t0
        results = work / "out" / "train_results.json"
        if proc.returncode != 0 or not results.exists():
            return {"failed": proc.returncode, "tail": (proc.stdout + proc.stderr)[-2000:]}
        metrics = json.loads(results.read_text())
        tokens = sum(lengths)
        return {"train_runtime_s": metrics.get("train_runtime"), "wall_s": round(wall, 1),
                "tokens_per_s_incl_warmup": round(tokens / metrics["train_runtime"], 1),
                "note": "includes its first (warm-up) steps; compare with kubetune-path tokens/s as an upper bound"}
    except subprocess.TimeoutExpired:
        return {"skipped": f"over its time budget ({budget_s:.0f} s)"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plan(smoke: bool) -> list[Case]:
    if smoke:
        return [Case("tiny", m, p, batch=4, cutoff=64, steps=2, warmup=1) for m in ("lora", "full")
                for p in (False, True)]
    cases = []
    for shape, batch, cutoff in (("1b", 16, 2048), ("8b", 8, 2048)):
        for method in ("lora", "full"):
            for packed in (False, True):
                cases.append(Case(shape, method, packed, batch=batch, cutoff=cutoff, steps=5, warmup=2,
                                  grad_ckpt=(shape == "8b" and method == "full")))
    return cases


def render(result: dict[str, Any]) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchlib

    rows = [dict(r, packed="packed" if r.get("packed") else "padded") for r in result["cases"]]
    table = benchlib.markdown_table(rows, [
        ("shape", "shape"), ("method", "method"), ("packed", "batch"), ("tokens_per_s", "non-padding tokens/s"),
        ("step_s", "step s"), ("mfu", "MFU"), ("peak_mem_gib", "peak GiB"), ("error", "error")])
    env = result["environment"]
    return (
        "# GPU fine-tuning throughput and MFU (random-weight Llama shapes)\n\n"
        f"`bash bench/gpu.sh OUTDIR` on {env.get('device')} — peak {result['peak_tflops']} TFLOP/s "
        f"({result['peak_source']}); attention {env.get('attn')}; dtype {env.get('dtype')}"
        f"{' — SMOKE RUN (tiny model, CPU): numbers mean nothing' if result['smoke'] else ''}.\n\n"
        f"{table}\nLLaMA-Factory: {json.dumps(result.get('llamafactory'))}\n\n"
        "MFU uses 6N (full) and 4N + 6N_lora (LoRA) FLOPs per non-padding token; attention FLOPs excluded.\n"
        f"Elapsed {result['elapsed_s']} s of a {result['budget_s']} s budget.\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="single-GPU LoRA/full fine-tuning tokens/s and MFU")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the logic, not the GPU")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting new cases after this")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--skip-llamafactory", action="store_true")
    p = ap.parse_args(argv)
    started = time.perf_counter()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not p.smoke:
        print("gpu_bench: no CUDA device; use --smoke for the CPU-side check", file=sys.stderr)
        return 2
    device = "cuda" if cuda and not p.smoke else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)"
    try:
        import flash_attn  # noqa: F401

        attn = "flash_attention_2" if device == "cuda" else "sdpa"
    except ImportError:
        attn = "sdpa"
    peak, source = peak_for(name, p.peak_tflops)
    p.out.mkdir(parents=True, exist_ok=True)
    import peft
    import transformers

    result: dict[str, Any] = {
        "benchmark": "gpu", "smoke": p.smoke, "peak_tflops": peak, "peak_source": source, "budget_s": p.budget_s,
        "environment": {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                        "transformers": transformers.__version__, "peft": peft.__version__, "attn": attn,
                        "dtype": dtype, "python": sys.version.split()[0]},
        "cases": [],
    }

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        (p.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        (p.out / "gpu.md").write_text(render(result))

    for case in plan(p.smoke):
        if time.perf_counter() - started > p.budget_s:
            result["cases"].append({"shape": case.shape, "method": case.method, "packed": case.packed,
                                    "error": "skipped: time budget spent"})
            continue
        print(f"gpu_bench: {case}", file=sys.stderr, flush=True)
        try:
            row = run_case(case, device=device, dtype_name=dtype, attn=attn, peak=peak, rank=p.rank)
        except Exception as exc:  # noqa: BLE001 - OOM or a kernel error: record it, go on with the other cases
            row = {"shape": case.shape, "method": case.method, "packed": case.packed,
                   "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if device == "cuda":
                torch.cuda.empty_cache()
        if device == "cuda":
            torch.cuda.empty_cache()
        result["cases"].append(row)
        print(f"gpu_bench: {json.dumps(row)}", file=sys.stderr, flush=True)
        save()
    if p.smoke or p.skip_llamafactory:
        result["llamafactory"] = {"skipped": "smoke run" if p.smoke else "--skip-llamafactory"}
    else:
        left = p.budget_s - (time.perf_counter() - started)
        lf_case = Case("1b", "lora", False, batch=16, cutoff=2048, steps=5, warmup=2)
        result["llamafactory"] = (llamafactory_case(lf_case, out=p.out, attn=attn, rank=p.rank, budget_s=left)
                                  if left > 60 else {"skipped": "no time left in the budget"})
    save()
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
