"""Trainer throughput: `kubetune run` vs `llamafactory-cli train`, side by side on this CPU.

    .venv/bin/python bench/train_throughput.py            # ~25 min on 2 shared cores; writes bench/results/train_throughput.*

Both tools LoRA-fine-tune the same SmolLM2-135M-Instruct folder (the GGUF dequantized once by
kubetune's ``gguf_to_folder``) on the same deterministic alpaca rows, with the same ChatML
rendering (checked token by token before timing), cutoff, LoRA rank/alpha/targets, batch, one
epoch, learning rate/schedule and seed. Two settings:

* ``identical``: no packing and no gradient checkpointing on either side;
* ``defaults``: each tool's recommended setting for the speed knobs (kubetune: ``packing: true``,
  padding-free batches; LLaMA-Factory: its defaults, which do not pack SFT data and turn gradient
  checkpointing on).

Runs alternate kubetune, LLaMA-Factory, kubetune, ... (``--reps`` each) so that load from other
processes on the machine hits both alike; the report gives medians and the kubetune/LLaMA-Factory
ratio. Tokens/s counts non-padding input tokens: every row is seen once (one epoch), so it is the
tokenized dataset's total length divided by the trainer's own ``train_runtime``.
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
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

GGUF = benchlib.REPO_ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("KUBETUNE_CACHE_DIR", benchlib.REPO_ROOT / ".cache" / "kubetune"))
WORK = benchlib.WORK_DIR / "train"
SYSTEM = "You are a helpful assistant."
TOOLS = ("kubetune", "llamafactory")
SETTINGS = ("identical", "defaults")

WORDS = (
    "cluster",
    "node",
    "pod",
    "job",
    "model",
    "adapter",
    "token",
    "batch",
    "epoch",
    "gradient",
    "learning",
    "rate",
    "schedule",
    "data",
    "set",
    "row",
    "column",
    "value",
    "field",
    "label",
    "prompt",
    "answer",
    "question",
    "system",
    "user",
    "assistant",
    "train",
    "evaluate",
    "metric",
    "loss",
    "accuracy",
    "memory",
    "storage",
    "bucket",
    "object",
    "upload",
    "download",
    "cache",
    "folder",
    "file",
    "path",
    "version",
    "release",
    "image",
    "container",
    "operator",
    "resource",
    "request",
    "limit",
    "status",
    "condition",
    "event",
    "watch",
    "update",
    "create",
    "delete",
    "patch",
    "apply",
    "reconcile",
    "queue",
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "on",
    "for",
    "with",
    "from",
    "by",
    "and",
    "or",
    "but",
    "not",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "has",
    "have",
    "had",
    "will",
    "would",
    "can",
    "could",
    "should",
    "may",
    "might",
    "must",
    "this",
    "that",
    "these",
    "those",
    "it",
    "its",
    "they",
    "them",
    "their",
    "we",
    "our",
    "you",
    "your",
    "he",
    "she",
    "his",
    "her",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "river",
    "mountain",
    "city",
    "garden",
    "window",
    "kitchen",
    "music",
    "story",
    "paper",
    "letter",
    "number",
    "small",
    "large",
    "short",
    "long",
    "early",
    "late",
    "fast",
    "slow",
    "bright",
    "dark",
    "warm",
    "cold",
    "simple",
    "careful",
    "useful",
    "clear",
)
INSTRUCTIONS = (
    "Explain how {a} relates to {b}.",
    "Summarize the following notes about {a}.",
    "Write a short story about {a}.",
    "List the steps to configure {a} for {b}.",
    "Translate this description of {a} into plain words.",
    "Give three tips about {a}.",
    "Describe the difference between {a} and {b}.",
    "Answer the question about {a}.",
)


# ------------------------------------------------------------------------------------------- inputs


def make_rows(n: int, seed: int = 1234) -> list[dict[str, str]]:
    """Deterministic alpaca rows with a wide spread of lengths (so padding matters, as in real data)."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for i in range(n):
        a, b = rng.choice(WORDS), rng.choice(WORDS)
        out_len = int(rng.choice([rng.randint(4, 30), rng.randint(30, 90), rng.randint(90, 180)]))
        rows.append(
            {
                "instruction": rng.choice(INSTRUCTIONS).format(a=a, b=b),
                "input": words(rng.randint(5, 40)) if i % 2 else "",
                "output": words(out_len).capitalize() + ".",
                "system": SYSTEM,
            }
        )
    return rows


def write_inputs(rows: list[dict[str, str]], work: Path) -> Path:
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "alpaca.json").write_text(json.dumps(rows, indent=0), encoding="utf-8")
    info = {
        "bench_alpaca": {
            "file_name": "alpaca.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
        }
    }
    (data_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return data_dir


def kubetune_job(
    name: str, model_dir: Path, data_dir: Path, out_dir: Path, p: argparse.Namespace, packing: bool
) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "stage": "sft",
            "model": {"source": f"file://{model_dir}"},  # template: the tokenizer's own chat template
            "datasets": [
                {
                    "name": "bench-alpaca",
                    "source": f"file://{data_dir / 'alpaca.json'}",
                    "formatting": "alpaca",
                    "columns": {"system": "system"},
                }
            ],
            "method": {
                "type": "lora",
                "lora": {"rank": p.rank, "alpha": 2 * p.rank, "dropout": 0.0, "target": ["all"]},
            },
            "training": {
                "epochs": 1,
                "batchSize": p.batch,
                "learningRate": p.lr,
                "scheduler": "constant",
                "cutoffLen": p.cutoff,
                "seed": p.seed,
                "packing": packing,
                "loggingSteps": 1,
                "precision": "fp32",
            },
            "resources": {"nodes": 1, "gpusPerNode": 0},
            "output": {"uri": f"file://{out_dir}"},
        },
    }


def llamafactory_config(
    model_dir: Path, data_dir: Path, out_dir: Path, p: argparse.Namespace, defaults: bool = False
) -> dict[str, Any]:
    """LLaMA-Factory's YAML for the same run. ``chatml`` renders exactly like SmolLM2's tokenizer template
    when a system prompt is given (checked token by token in ``check_same_tokens``).

    LLaMA-Factory turns gradient checkpointing on unless told otherwise (kubetune leaves it off), so the
    identical setting disables it; ``defaults`` keeps LLaMA-Factory's own choice.
    """
    extra = {} if defaults else {"disable_gradient_checkpointing": True}
    return {
        **extra,
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": p.rank,
        "lora_alpha": 2 * p.rank,
        "lora_dropout": 0.0,
        "lora_target": "all",
        "dataset": "bench_alpaca",
        "dataset_dir": str(data_dir),
        "template": "chatml",
        "cutoff_len": p.cutoff,
        "overwrite_cache": True,
        "output_dir": str(out_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": p.batch,
        "gradient_accumulation_steps": 1,
        "learning_rate": p.lr,
        "num_train_epochs": 1.0,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": p.seed,
        "data_seed": p.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "bf16": False,
        "fp16": False,
        "plot_loss": False,
        "dataloader_num_workers": 0,
    }


# ------------------------------------------------------------------------------------------- checks


def kubetune_tokens(job_file: Path) -> list[dict[str, Any]]:
    """The rows `kubetune run` trains on, from its own data pipeline (same calls as runner.run)."""
    from kubetune.api.v1alpha1 import FineTuneJob
    from kubetune.trainer.data.loader import convert_all, tokenize_all
    from kubetune.trainer.data.options import DataOptions
    from kubetune.trainer.data.templates import get_template
    from kubetune.trainer.local import local_config
    from kubetune.trainer.models.loader import load_tokenizer, resolve_model

    job = FineTuneJob.model_validate(yaml.safe_load(job_file.read_text()))
    config = local_config(job, job_file, cache_dir=CACHE)
    data_options = DataOptions.from_config(config)
    converted = convert_all(data_options)
    tokenizer = load_tokenizer(resolve_model(config))
    template = get_template(job.spec.model.template, tokenizer)
    return tokenize_all(data_options, tokenizer, template, converted).train


def compare_tokens(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Row-by-row equality of input_ids and labels; the first mismatch is shown."""
    same_ids = sum(a["input_ids"] == b["input_ids"] for a, b in zip(ours, theirs))
    same_labels = sum(a["labels"] == b["labels"] for a, b in zip(ours, theirs))
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a["input_ids"] != b["input_ids"]), None)
    return {
        "rows_kubetune": len(ours),
        "rows_llamafactory": len(theirs),
        "same_input_ids": same_ids,
        "same_labels": same_labels,
        "identical": len(ours) == len(theirs) == same_ids == same_labels,
        "first_mismatch_row": first,
    }


def check_same_tokens(lf_python: str, job_file: Path, lf_yaml: Path) -> tuple[dict[str, Any], list[dict]]:
    ours = kubetune_tokens(job_file)
    out = WORK / "lf-tokens.json"
    subprocess.run(
        [lf_python, str(benchlib.BENCH_DIR / "_lf_tokenize.py"), str(lf_yaml), str(out)],
        check=True,
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    theirs = json.loads(out.read_text())
    return compare_tokens(ours, theirs), ours


# ------------------------------------------------------------------------------------------- runs


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "KUBETUNE_CACHE_DIR": str(CACHE),
            "PYTHONWARNINGS": "ignore",
            "DISABLE_VERSION_CHECK": "1",
            "WANDB_DISABLED": "true",
            "LLAMAFACTORY_VERBOSITY": "WARN",
        }
    )
    return env


def last_loss(log_lines: list[dict[str, Any]]) -> float | None:
    losses = [e["loss"] for e in log_lines if "loss" in e]
    return losses[-1] if losses else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hms_seconds(text: str) -> float:
    """LLaMA-Factory's ``elapsed_time`` ("H:MM:SS") in seconds."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def steady_step_s(points: list[tuple[int, float]]) -> float | None:
    """Seconds per step after the first logged step (which carries the warm-up), from (step, elapsed) points."""
    points = sorted(points)
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    return round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]), 3)


def run_kubetune(name: str, job: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    job_file = run_dir / "job.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    kubetune = str(Path(sys.executable).with_name("kubetune"))
    m = benchlib.run_measured(
        [kubetune, "run", str(job_file)], env=run_env(), cwd=run_dir, log_file=run_dir / "run.log"
    )
    out = Path(job["spec"]["output"]["uri"].removeprefix("file://"))
    metrics: dict[str, Any] = {}
    if (out / "manifest.json").exists():
        metrics = json.loads((out / "manifest.json").read_text()).get("metrics", {})
    log = read_jsonl(out / "trainer_log.jsonl")
    points = [(e["step"], e["train_runtime"]) for e in log if "loss" in e and "train_runtime" in e and "step" in e]
    return {"measured": m, "metrics": metrics, "log": log, "steady_step_s": steady_step_s(points)}


def run_llamafactory(lf_python: str, config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / "lf.yaml"
    cfg_file.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = str(Path(lf_python).with_name("llamafactory-cli"))
    m = benchlib.run_measured([cli, "train", str(cfg_file)], env=run_env(), cwd=run_dir, log_file=run_dir / "run.log")
    out = Path(config["output_dir"])
    metrics = json.loads((out / "train_results.json").read_text()) if (out / "train_results.json").exists() else {}
    state = json.loads((out / "trainer_state.json").read_text()) if (out / "trainer_state.json").exists() else {}
    points = [
        (e["current_steps"], hms_seconds(e["elapsed_time"]))
        for e in read_jsonl(out / "trainer_log.jsonl")
        if "loss" in e and e.get("elapsed_time")
    ]
    return {
        "measured": m,
        "metrics": metrics,
        "log": state.get("log_history", []),
        "steady_step_s": steady_step_s(points),
    }


def record(tool: str, setting: str, rep: int, raw: dict[str, Any], tokens: int, steps: int) -> dict[str, Any]:
    m: benchlib.Measured = raw["measured"]
    runtime = raw["metrics"].get("train_runtime")
    ok = m.returncode == 0 and runtime is not None
    logged = sum(1 for e in raw["log"] if "loss" in e)  # logging_steps=1: one entry per optimizer step
    # (packing turns the rows into fewer, fuller sequences, so a packed epoch has fewer steps)
    row = {
        "tool": tool,
        "setting": setting,
        "rep": rep,
        "ok": ok,
        "returncode": m.returncode,
        "train_runtime_s": runtime,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "peak_rss_mib": m.peak_rss_mib,
        "tokens_per_s": round(tokens / runtime, 1) if ok else None,
        "step_time_s": round(runtime / (logged or steps), 3) if ok else None,
        "steady_step_time_s": raw.get("steady_step_s") if ok else None,
        "train_loss": raw["metrics"].get("train_loss"),
        "final_loss": last_loss(raw["log"]),
        "logged_steps": logged,
    }
    if not ok:
        row["error_tail"] = m.output_tail[-1500:]
    return row


def measure(p: argparse.Namespace) -> dict[str, Any]:
    from kubetune.trainer.models.loader import gguf_to_folder

    lf_python = (
        subprocess.run(
            ["bash", str(benchlib.BENCH_DIR / "llamafactory_env.sh")], check=True, capture_output=True, text=True
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    model_dir, _sha = gguf_to_folder(GGUF, CACHE)
    shutil.rmtree(WORK, ignore_errors=True)
    data_dir = write_inputs(make_rows(p.rows, p.data_seed), WORK)

    probe = WORK / "check"
    probe.mkdir(parents=True)
    (probe / "job.yaml").write_text(
        yaml.safe_dump(kubetune_job("check", model_dir, data_dir, probe / "out", p, False))
    )
    (probe / "lf.yaml").write_text(yaml.safe_dump(llamafactory_config(model_dir, data_dir, probe / "lf-out", p)))
    tokens_check, rows = check_same_tokens(lf_python, probe / "job.yaml", probe / "lf.yaml")
    print(f"token check: {tokens_check}", file=sys.stderr)
    if not tokens_check["identical"] and not p.allow_token_mismatch:
        raise SystemExit(f"kubetune and LLaMA-Factory tokenize differently: {tokens_check}")
    tokens = sum(len(r["input_ids"]) for r in rows)
    trainable = sum(sum(1 for x in r["labels"] if x != -100) for r in rows)
    steps = math.ceil(len(rows) / p.batch)
    padded = padded_tokens(rows, p.batch, p.seed)

    runs, first_rep = merged_runs(p)
    for setting in p.settings:
        for rep, tool in benchlib.alternate(TOOLS, p.reps):
            rep += first_rep
            name = f"{tool[:2]}-{setting}-{rep}"
            run_dir = WORK / "runs" / name
            print(f"[{setting}] run {rep + 1} {tool} ...", file=sys.stderr, flush=True)
            if tool == "kubetune":
                job = kubetune_job(f"bench-{name}", model_dir, data_dir, run_dir / "out", p, setting == "defaults")
                raw = run_kubetune(name, job, run_dir)
            else:
                raw = run_llamafactory(
                    lf_python,
                    llamafactory_config(model_dir, data_dir, run_dir / "out", p, defaults=setting == "defaults"),
                    run_dir,
                )
            row = record(tool, setting, rep, raw, tokens, steps)
            print(f"    {json.dumps({k: v for k, v in row.items() if k != 'error_tail'})}", file=sys.stderr)
            runs.append(row)

    summary = summarize(runs)
    lf_versions = subprocess.run(
        [
            lf_python,
            "-c",
            (
                "import importlib.metadata as m, json; print(json.dumps("
                "{p: m.version(p) for p in ['llamafactory','torch','transformers','peft','trl',"
                "'accelerate','datasets']}))"
            ),
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "benchmark": "train_throughput",
        "machine": benchlib.machine_info(note=p.note),
        "llamafactory_venv_packages": json.loads(lf_versions) if lf_versions else None,
        "workload": {
            "model": f"SmolLM2-135M-Instruct ({GGUF.name} dequantized to fp32 by kubetune.trainer.models.loader."
            "gguf_to_folder; the same folder for both tools)",
            "rows": len(rows),
            "data_seed": p.data_seed,
            "cutoff_len": p.cutoff,
            "batch_size": p.batch,
            "steps": steps,
            "epochs": 1,
            "lora": {
                "rank": p.rank,
                "alpha": 2 * p.rank,
                "dropout": 0.0,
                "target": "all linear layers except lm_head",
            },
            "learning_rate": p.lr,
            "scheduler": "constant",
            "seed": p.seed,
            "precision": "fp32",
            "template": "kubetune: tokenizer chat template; LLaMA-Factory: chatml (system prompt given per row)",
            "non_padding_tokens": tokens,
            "trainable_tokens": trainable,
            "padded_tokens_without_packing_estimate": padded,
            "reps_per_tool": p.reps + first_rep,
            "order": "alternating kubetune, llamafactory, kubetune, ...",
        },
        "token_check": tokens_check,
        "summary": summary,
        "runs": runs,
    }


KEYS = (
    "tokens_per_s",
    "step_time_s",
    "steady_step_time_s",
    "train_runtime_s",
    "wall_s",
    "cpu_s",
    "peak_rss_mib",
    "train_loss",
    "final_loss",
)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: medians per tool over the counted runs, and the kubetune / LLaMA-Factory ratios."""
    summary = []
    for setting in [s for s in SETTINGS if any(r["setting"] == s for r in runs)]:
        per_tool = {
            tool: benchlib.summarize([r for r in runs if r["tool"] == tool and r["setting"] == setting], KEYS)
            for tool in TOOLS
        }
        summary.append(
            {
                "setting": setting,
                "kubetune": per_tool["kubetune"],
                "llamafactory": per_tool["llamafactory"],
                "ratio_tokens_per_s": benchlib.ratio(
                    per_tool["kubetune"]["tokens_per_s"], per_tool["llamafactory"]["tokens_per_s"]
                ),
                "ratio_wall": benchlib.ratio(per_tool["llamafactory"]["wall_s"], per_tool["kubetune"]["wall_s"]),
                "ratio_cpu": benchlib.ratio(per_tool["llamafactory"]["cpu_s"], per_tool["kubetune"]["cpu_s"]),
                "target_ratio": 1.0 if setting == "identical" else 1.5,
            }
        )
    return summary


def merged_runs(p: argparse.Namespace) -> tuple[list[dict[str, Any]], int]:
    """Runs kept from an earlier results file (``--merge``), with ``--exclude``d ones marked not ok.

    Lets one more alternating round join an earlier session, e.g. when a run was disturbed (say so in
    ``--exclude TOOL:SETTING:REP=why``); the workload must be the same, which is checked.
    """
    if p.merge is None:
        return [], 0
    old = json.loads(p.merge.read_text())
    w = old["workload"]
    if (w["rows"], w["cutoff_len"], w["batch_size"], w["lora"]["rank"], w["seed"]) != (
        p.rows,
        p.cutoff,
        p.batch,
        p.rank,
        p.seed,
    ):
        raise SystemExit(f"--merge {p.merge}: a different workload ({w}); use the same --rows/--cutoff/--batch/...")
    excluded = dict(item.split("=", 1) if "=" in item else (item, "excluded") for item in p.exclude)
    runs = old["runs"]
    for r in runs:
        key = f"{r['tool']}:{r['setting']}:{r['rep']}"
        if key in excluded:
            r["ok"], r["excluded"] = False, excluded[key]
    return runs, 1 + max(r["rep"] for r in runs)


def padded_tokens(rows: list[dict[str, Any]], batch: int, seed: int) -> int:
    """Tokens a padded batch computes (pad to the longest row, then to a multiple of 8), in a seeded order.

    The trainers' sampler order differs from this one, so it is an estimate of the padding overhead only.
    """
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    total = 0
    for start in range(0, len(order), batch):
        lengths = [len(rows[i]["input_ids"]) for i in order[start : start + batch]]
        longest = int(math.ceil(max(lengths) / 8) * 8)
        total += longest * len(lengths)
    return total


# ------------------------------------------------------------------------------------------- report


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:300]


def render(result: dict[str, Any]) -> str:
    w = result["workload"]
    rows = []
    for s in result["summary"]:
        for tool in TOOLS:
            t = s[tool]
            rows.append(
                {
                    "setting": s["setting"],
                    "tool": tool,
                    "ok": f"{t['ok_runs']}/{t['runs']}",
                    "tps": t["tokens_per_s"],
                    "step": t["step_time_s"],
                    "steady": t.get("steady_step_time_s"),
                    "runtime": t["train_runtime_s"],
                    "wall": t["wall_s"],
                    "cpu": t.get("cpu_s"),
                    "rss": t["peak_rss_mib"],
                    "loss": t["train_loss"],
                    "final": t["final_loss"],
                }
            )
    table = benchlib.markdown_table(
        rows,
        [
            ("setting", "setting"),
            ("tool", "tool"),
            ("ok", "ok runs"),
            ("tps", "non-padding tokens/s (median)"),
            ("step", "step time s"),
            ("steady", "step time after step 1 s"),
            ("runtime", "train_runtime s"),
            ("wall", "process wall s"),
            ("cpu", "process CPU s"),
            ("rss", "peak RSS MiB"),
            ("loss", "train_loss (mean)"),
            ("final", "final step loss"),
        ],
    )
    ratios = benchlib.markdown_table(
        [
            {
                "setting": s["setting"],
                "ratio": s["ratio_tokens_per_s"],
                "target": s["target_ratio"],
                "met": (s["ratio_tokens_per_s"] or 0) >= s["target_ratio"] if s["ratio_tokens_per_s"] else None,
                "wall": s["ratio_wall"],
                "cpu": s.get("ratio_cpu"),
            }
            for s in result["summary"]
        ],
        [
            ("setting", "setting"),
            ("ratio", "tokens/s ratio kubetune / LLaMA-Factory"),
            ("target", "target"),
            ("met", "met"),
            ("wall", "process wall ratio LLaMA-Factory / kubetune"),
            ("cpu", "process CPU ratio LLaMA-Factory / kubetune"),
        ],
    )
    tc = result["token_check"]
    lfv = result.get("llamafactory_venv_packages") or {}
    return (
        "# Trainer throughput: kubetune vs LLaMA-Factory (CPU)\n\n"
        "`.venv/bin/python bench/train_throughput.py` — medians over alternating runs "
        "(kubetune, LLaMA-Factory, kubetune, ...; the ok-runs column counts them).\n\n"
        f"{ratios}\n{table}\n"
        + "".join(
            f"- Not counted: {r['tool']} {r['setting']} run {r['rep'] + 1}: {r['excluded']}\n"
            for r in result["runs"]
            if r.get("excluded")
        )
        + "".join(
            f"- Failed: {r['tool']} {r['setting']} run {r['rep'] + 1}: `{last_line(r['error_tail'])}`\n"
            for r in result["runs"]
            if not r.get("ok") and r.get("error_tail") and not r.get("excluded")
        )
        + "\n## Workload\n\n"
        f"- {w['model']}\n"
        f"- {w['rows']} deterministic alpaca rows (seed {w['data_seed']}), one epoch = {w['steps']} steps of batch "
        f"{w['batch_size']}, cutoff {w['cutoff_len']}; LoRA r={w['lora']['rank']} alpha={w['lora']['alpha']} on "
        f"{w['lora']['target']}; lr {w['learning_rate']} constant; seed {w['seed']}; {w['precision']}\n"
        f"- {w['non_padding_tokens']:,} non-padding tokens ({w['trainable_tokens']:,} trained); padded batches "
        f"compute about {w['padded_tokens_without_packing_estimate']:,} positions\n"
        f"- Same tokens on both sides: {tc['same_input_ids']}/{tc['rows_kubetune']} rows identical input_ids, "
        f"{tc['same_labels']} identical labels ({w['template']})\n"
        "- identical = no packing and no gradient checkpointing on both; defaults = kubetune `packing: true` "
        "(padding-free batches, no gradient checkpointing), LLaMA-Factory defaults (no packing for SFT, gradient "
        "checkpointing on)\n"
        "- tokens/s = non-padding tokens of the epoch / the trainer's `train_runtime`; step time = "
        "train_runtime / optimizer steps (a packed epoch has fewer, fuller steps); process wall includes "
        "imports, data preparation and model loading; peak RSS of "
        "the training process\n\n"
        "## Machine\n\n"
        + benchlib.machine_markdown(result["machine"])
        + f"- LLaMA-Factory venv: {', '.join(f'{k} {v}' for k, v in lfv.items())}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data-seed", type=int, default=1234)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    ap.add_argument("--allow-token-mismatch", action="store_true")
    ap.add_argument(
        "--note",
        default="2 vCPUs shared with other engineers' processes during the run; "
        "alternating runs keep the comparison fair, absolute numbers vary with load",
    )
    ap.add_argument("--merge", type=Path, help="keep the runs of this earlier results JSON (same workload)")
    ap.add_argument(
        "--exclude",
        nargs="*",
        default=[],
        metavar="TOOL:SETTING:REP=WHY",
        help="runs of --merge not to count, with the reason (kept in the JSON)",
    )
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    ap.add_argument("--render-only", type=Path, help="recompute the summary and tables of this results JSON")
    p = ap.parse_args(argv)
    if p.render_only:
        result = json.loads(p.render_only.read_text())
        for r in result["runs"]:
            if r.get("ok") and r.get("logged_steps"):
                r["step_time_s"] = round(r["train_runtime_s"] / r["logged_steps"], 3)
        result["summary"] = summarize(result["runs"])
    else:
        result = measure(p)
    js, md = benchlib.write_results("train_throughput", result, render(result), p.out)
    print(md.read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
