"""The GPU-fit estimate (kubetune.api.memory) beside what the trainer allocates on CPU runs.

For the tiny random Llama of the tests and SmolLM2-135M, full and LoRA fine-tuning in bf16 (autocast, fp32
master weights), one optimizer step each in its own process: the model states the trainer really holds
(parameters + gradients + Adam states, counted just before the optimizer step), the process's peak RSS
above its RSS right before the model was loaded, and the estimate's model states and total (without the
CUDA overhead, which a CPU run does not have). DeepSpeed's own estimators are checked against the estimate
in tests/trainer/test_memory_fit.py.

    .venv/bin/python bench/memory_fit.py        # writes bench/results/memory_fit.{json,md}
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("operator", "trainer", ".")]

from bench.benchlib import REPO_ROOT, WORK_DIR, machine_info, machine_markdown, markdown_table, write_results

CUTOFF, BATCH = 64, 2


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(model_dir: str, method: str) -> None:
    """One measured run (in a fresh process), printing a JSON line."""
    import resource

    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from kubetune.api.trainer_config import TrainerConfig
    from kubetune.trainer.models.adapters import apply_method
    from kubetune.trainer.models.loader import ModelRef, load_model
    from kubetune.trainer.models.precision import autocast_flags

    spec_method = {"type": method, **({"lora": {"rank": 8}} if method == "lora" else {})}
    config = TrainerConfig.model_validate(
        {
            "spec": {
                "model": {"source": f"file://{model_dir}"},
                "datasets": [{"name": "d", "source": "file:///d.json"}],
                "method": spec_method,
                "training": {"precision": "bf16", "cutoffLen": CUTOFF, "batchSize": BATCH},
            },
            "runtime": {"jobName": "m", "outputUri": "file:///tmp/o", "cacheDir": "/tmp", "scratchDir": "/tmp"},
        }
    )
    baseline = _rss_mib()
    model = apply_method(load_model(ModelRef(Path(model_dir), "bench"), config), config.spec)
    seen: dict[str, int] = {}

    class States(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
            trainable = [p for p in model.parameters() if p.requires_grad]
            seen["weights"] = sum(p.numel() * p.element_size() for p in model.parameters())
            seen["grads"] = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)

        def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            trainable = [p for p in model.parameters() if p.requires_grad]
            seen["optimizer"] = sum(
                v.numel() * v.element_size()
                for p in trainable
                for v in optimizer.state.get(p, {}).values()
                if isinstance(v, torch.Tensor) and v.dim() > 0
            )

    ids = list(range(5, 5 + CUTOFF))
    rows = Dataset.from_list([{"input_ids": ids, "labels": ids, "attention_mask": [1] * CUTOFF}] * BATCH)
    args = TrainingArguments(
        output_dir=str(WORK_DIR / "memory-fit"),
        max_steps=1,
        per_device_train_batch_size=BATCH,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        **autocast_flags("bf16"),
    )
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[States()]).train()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({**seen, "peak_rss_above_baseline_mib": round(peak - baseline, 1)}))


def tiny_model(folder: Path, tokenizer_dir: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    from kubetune.api.memory import GIB, ModelShape, estimate

    small = next((REPO_ROOT / ".cache" / "kubetune" / "models").glob("gguf-*"), None)
    if small is None:
        sys.exit("run `make model` and the tests once: SmolLM2-135M is dequantized into .cache/kubetune/models")
    models = {"tiny (2 layers, h64)": tiny_model(WORK_DIR / "tiny-llama", small), "SmolLM2-135M": small}
    rows = []
    for label, folder in models.items():
        shape = ModelShape.from_config(json.loads((folder / "config.json").read_text()))
        for method in ("full", "lora"):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), method],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO_ROOT,
            )
            got = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
            est = estimate(shape, method=method, lora_rank=8, cutoff_len=CUTOFF, batch_size=BATCH)
            states_est = (est.weights_gib + est.gradients_gib + est.optimizer_gib) * GIB / 2**20
            states = (got["weights"] + got["grads"] + got["optimizer"]) / 2**20
            rows.append(
                {
                    "model": label,
                    "method": method,
                    "params_m": round(shape.parameters / 1e6, 2),
                    "states_measured": round(states, 2),
                    "states_estimated": round(states_est, 2),
                    "peak_measured": got["peak_rss_above_baseline_mib"],
                    "total_estimated": round((est.total_gib - est.overhead_gib) * GIB / 2**20, 1),
                }
            )
            print(rows[-1], flush=True)
    info = machine_info(note=f"bf16 autocast on CPU, cutoff {CUTOFF}, batch {BATCH}, one AdamW step")
    table = markdown_table(
        rows,
        [
            ("model", "model"),
            ("method", "method"),
            ("params_m", "params (M)"),
            ("states_measured", "model states measured (MiB)"),
            ("states_estimated", "model states estimated (MiB)"),
            ("peak_measured", "peak RSS above load (MiB)"),
            ("total_estimated", "estimate total, no CUDA overhead (MiB)"),
        ],
    )
    md = (
        "# GPU-fit estimate vs the trainer's allocations (CPU)\n\n"
        + machine_markdown(info)
        + "\n"
        + table
        + "\nModel states measured = parameters + gradients (before the optimizer step) + Adam states; the "
        "estimate adds autocast's 16-bit copy of the trainable weights, alive during forward/backward.\n"
    )
    write_results("memory_fit", {"machine": info, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
