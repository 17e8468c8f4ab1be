"""Where kubetune's training time goes on CPU (SmolLM2-135M, LoRA).

    .venv/bin/python bench/profile_train.py       # ~10 min on 2 shared cores; writes bench/results/profile.{json,md}
                                                  # and bench/results/profile-kubetune.txt (pyinstrument call tree)

Two parts:

1. **pyinstrument** over a whole `kubetune run` of a small job (in-process ``runner.run``), with the
   wall time of each runner phase (data, model, training, saving).
2. **The loss path, isolated.** kubetune's SFT stage trains with TRL's ``SFTTrainer``, which scores
   tokens through TRL's fused, chunked LM head (log-probs, entropy and top-1 for its metrics);
   LLaMA-Factory's trainer uses the model's own cross-entropy. The same LoRA model and padded batch
   take forward+backward+optimizer steps both ways, each in a fresh process (so peak RSS is its own),
   alternating A B A B; medians are reported.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

import benchlib

GGUF = benchlib.REPO_ROOT / ".cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = Path(os.environ.get("KUBETUNE_CACHE_DIR", benchlib.REPO_ROOT / ".cache" / "kubetune"))
WORK = benchlib.WORK_DIR / "profile"
VARIANTS = {
    "trl_fused_head": "TRL SFTTrainer loss path (fused chunked LM head + entropy/top-1)",
    "model_loss": "model's own cross-entropy (transformers Trainer / LLaMA-Factory)",
    "kubetune": "kubetune's causal_lm loss: LM head on trained positions only, padded batch",
    "kubetune_flat": "kubetune's causal_lm loss on the same rows flattened padding-free",
}


# ------------------------------------------------------------------------------------------- part 2: one step


def make_batch(rows: int, seed: int, vocab: int, cutoff: int) -> dict[str, Any]:
    """A padded batch shaped like the benchmark's alpaca rows: varied lengths, prompt masked."""
    import torch

    rng = random.Random(seed)
    lengths = [rng.randint(cutoff // 4, cutoff) for _ in range(rows)]
    longest = -(-max(lengths) // 8) * 8
    ids = torch.full((rows, longest), 2, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    g = torch.Generator().manual_seed(seed)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[r, :n] = 1
        labels[r, n // 3 : n] = ids[r, n // 3 : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "tokens": sum(lengths)}


def one_variant(variant: str, model_dir: str, steps: int, rows: int, cutoff: int) -> dict[str, Any]:
    """Runs in a child process: load, wrap with LoRA, time ``steps`` optimizer steps after one warm-up."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if variant == "trl_fused_head":
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = make_batch(rows, 0, model.config.vocab_size, cutoff)
    tokens = batch.pop("tokens")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer = None
    if variant.startswith("kubetune"):  # the trainer's own compute_loss (stages/causal_lm.py), not a copy of it
        import tempfile

        from transformers import TrainingArguments

        from kubetune.trainer.stages.causal_lm import make_trainer_class

        trainer = make_trainer_class()(
            model=model, args=TrainingArguments(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none")
        )
        if variant == "kubetune_flat":
            keep = batch["attention_mask"].bool()
            batch = {
                "input_ids": batch["input_ids"][keep][None],
                "labels": batch["labels"][keep][None],
                "position_ids": torch.cat([torch.arange(int(n)) for n in keep.sum(1)])[None],
            }

    def step() -> float:
        if trainer is not None:
            loss = trainer.compute_loss(model, dict(batch))
        elif variant == "trl_fused_head":
            out = model(**batch, fused_lm_head=True, use_cache=False)
            loss = -out.log_probs.sum() / out.label_mask.sum()
            # the metrics TRL computes on every step
            _ = (out.entropy.detach().sum() / out.label_mask.sum()).item(), out.is_top1.sum().item()
        else:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        return float(loss.detach())

    first_loss = step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "variant": variant,
        "step_times_s": [round(t, 3) for t in times],
        "median_step_s": round(benchlib.median(times), 3),
        "first_loss": round(first_loss, 4),
        "tokens_per_step": tokens,
        "rss_after_load_mib": round(rss_before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def loss_path(model_dir: Path, p: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for rep, variant in benchlib.alternate(list(VARIANTS), p.reps):
        print(f"loss path: rep {rep + 1}/{p.reps} {variant} ...", file=sys.stderr, flush=True)
        out = WORK / f"step-{variant}-{rep}.json"
        m = benchlib.run_measured(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--model-dir",
                str(model_dir),
                "--steps",
                str(p.steps),
                "--rows",
                str(p.rows),
                "--cutoff",
                str(p.cutoff),
                "--variant-out",
                str(out),
            ],
            env=dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false"),
            log_file=WORK / f"step-{variant}-{rep}.log",
        )
        row = (
            json.loads(out.read_text())
            if m.returncode == 0 and out.exists()
            else {"variant": variant, "error": m.output_tail[-1000:]}
        )
        row["rep"] = rep
        print(f"    {json.dumps(row)}", file=sys.stderr, flush=True)
        runs.append(row)
    return {"runs": runs, "summary": summarize_loss_path(runs)}


def venv_compare(model_dir: Path, p: argparse.Namespace) -> dict[str, Any]:
    """The model_loss step under two interpreters (kubetune's venv and e.g. LLaMA-Factory's), alternating:
    the same code on different torch/transformers/peft versions."""
    pythons = {"kubetune venv": sys.executable, "other venv": p.compare_python}
    runs = []
    for rep, label in benchlib.alternate(list(pythons), p.reps):
        print(f"venv compare: rep {rep + 1}/{p.reps} {label} ...", file=sys.stderr, flush=True)
        out = WORK / f"venv-{rep}-{label.split()[0]}.json"
        m = benchlib.run_measured(
            [
                pythons[label],
                __file__,
                "--variant",
                "model_loss",
                "--model-dir",
                str(model_dir),
                "--steps",
                str(p.steps),
                "--rows",
                str(p.rows),
                "--cutoff",
                str(p.cutoff),
                "--variant-out",
                str(out),
            ],
            env=dict(os.environ, PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false"),
            log_file=WORK / f"venv-{rep}-{label.split()[0]}.log",
        )
        row = json.loads(out.read_text()) if m.returncode == 0 and out.exists() else {"error": m.output_tail[-800:]}
        versions = subprocess.run(
            [
                pythons[label],
                "-c",
                (
                    "import torch, transformers, peft; print(torch.__version__,"
                    " transformers.__version__, peft.__version__)"
                ),
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        row.update(rep=rep, venv=label, python=pythons[label], versions=versions, cpu_s=m.cpu_s)
        print(f"    {json.dumps(row)}", file=sys.stderr, flush=True)
        runs.append(row)
    summary = {
        label: {
            "median_step_s": benchlib.median(t for r in runs if r["venv"] == label for t in r.get("step_times_s", [])),
            "versions": next((r["versions"] for r in runs if r["venv"] == label), None),
        }
        for label in pythons
    }
    return {"runs": runs, "summary": summary}


def summarize_loss_path(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: the median of every timed step of its successful runs, and the median peak RSS."""
    summary: dict[str, Any] = {}
    for variant, what in VARIANTS.items():
        good = [r for r in runs if r["variant"] == variant and "step_times_s" in r]
        summary[variant] = {
            "what": what,
            "median_step_s": benchlib.median(t for r in good for t in r["step_times_s"]),
            "peak_rss_mib": benchlib.median(r["peak_rss_mib"] for r in good),
            "first_loss": good[0]["first_loss"] if good else None,
            "ok_runs": len(good),
        }
    summary["slowdown_trl_vs_model_loss"] = benchlib.ratio(
        summary["trl_fused_head"]["median_step_s"], summary["model_loss"]["median_step_s"]
    )
    for variant in ("kubetune", "kubetune_flat"):
        summary[f"speedup_{variant}_vs_model_loss"] = benchlib.ratio(
            summary["model_loss"]["median_step_s"], summary[variant]["median_step_s"]
        )
    return summary


# ------------------------------------------------------------------------------------------- part 1: whole run


def whole_run(model_dir: Path, p: argparse.Namespace) -> dict[str, Any]:
    from pyinstrument import Profiler
    from train_throughput import make_rows, write_inputs

    from kubetune.api.v1alpha1 import FineTuneJob
    from kubetune.trainer.local import local_config
    from kubetune.trainer.runner import run

    data_dir = write_inputs(make_rows(p.profile_rows, 1234), WORK)
    job = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "profile"},
        "spec": {
            "stage": "sft",
            "model": {"source": f"file://{model_dir}"},
            "datasets": [
                {"name": "bench", "source": f"file://{data_dir / 'alpaca.json'}", "columns": {"system": "system"}}
            ],
            "method": {"type": "lora", "lora": {"rank": 16, "target": ["all"]}},
            "training": {"epochs": 1, "batchSize": 4, "cutoffLen": p.cutoff, "scheduler": "constant"},
            "output": {"uri": f"file://{WORK / 'out'}"},
        },
    }
    job_file = WORK / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    config = local_config(FineTuneJob.model_validate(job), job_file, cache_dir=CACHE)
    phases: list[tuple[str, float]] = []
    profiler = Profiler(interval=0.01)
    t0 = time.perf_counter()
    profiler.start()
    result = run(config, on_phase=lambda name: phases.append((name, time.perf_counter())))
    profiler.stop()
    total = time.perf_counter() - t0
    (benchlib.RESULTS_DIR / "profile-kubetune.txt").write_text(
        profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False), encoding="utf-8"
    )
    durations: dict[str, float] = {}
    marks = [("start", t0), *phases, ("end", t0 + total)]
    for (name, start), (_, end) in itertools.pairwise(marks):
        durations[name] = round(durations.get(name, 0.0) + end - start, 2)
    return {
        "rows": p.profile_rows,
        "steps": -(-p.profile_rows // 4),
        "total_s": round(total, 2),
        "phase_s": durations,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }


# ------------------------------------------------------------------------------------------- py-spy


def summarize_pyspy(raw: str, top: int = 45) -> dict[str, Any]:
    """Inclusive share of samples per function from py-spy's ``--format raw`` output (``a;b;c COUNT`` lines).

    A function counts once per sample however deep it recurs; frames are named ``function (module path)``.
    """
    total = 0
    inclusive: collections.Counter = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        names = set()
        for frame in stack.split(";"):
            match = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
            func, path = (match.group(1), match.group(2)) if match else (frame, "")
            names.add(f"{func} ({path.split('site-packages/')[-1].split('/work/main/')[-1]})")
        for name in names:
            inclusive[name] += n
    rows = (
        [{"share": round(n / total, 4), "function": name} for name, n in inclusive.most_common(top)] if total else []
    )
    return {"samples": total, "top": rows}


# ------------------------------------------------------------------------------------------- report


def render(result: dict[str, Any]) -> str:
    out = [
        (
            "# Profile: kubetune's training hot path (CPU)\n\n"
            "`.venv/bin/python bench/profile_train.py [--pyspy RAW]` — raw numbers in profile.json.\n\n"
        )
    ]
    out.append(result.get("findings_md", ""))
    for spy in result.get("pyspy") or []:
        out.append(
            f"\n## py-spy: {spy['what']} ({spy['samples']} samples)\n\n"
            "Inclusive share of samples per function (a function counts once per sample):\n\n"
        )
        out.append(
            benchlib.markdown_table(
                [{"share": f"{100 * r['share']:.1f}%", "function": r["function"]} for r in spy["top"]],
                [("share", "share"), ("function", "function")],
            )
        )
    lp = (result.get("loss_path") or {}).get("summary")
    if lp:
        table = benchlib.markdown_table(
            [
                {
                    "v": v,
                    "what": lp[v]["what"],
                    "step": lp[v]["median_step_s"],
                    "rss": lp[v]["peak_rss_mib"],
                    "loss": lp[v]["first_loss"],
                }
                for v in VARIANTS
            ],
            [
                ("v", "variant"),
                ("what", "what"),
                ("step", "median step s"),
                ("rss", "peak RSS MiB"),
                ("loss", "first-step loss"),
            ],
        )
        out.append(
            f"\n## The loss path, isolated (SmolLM2-135M + LoRA r=16, {result['settings']['rows']} rows "
            f"padded, cutoff {result['settings']['cutoff']}, alternating fresh processes)\n\n{table}\n"
            f"TRL's path / the model's own loss: **{lp['slowdown_trl_vs_model_loss']}×** step time. "
            f"The model's own loss / kubetune's: **{lp.get('speedup_kubetune_vs_model_loss')}×** padded, "
            f"**{lp.get('speedup_kubetune_flat_vs_model_loss')}×** flattened padding-free.\n"
        )
    vc = (result.get("venv_compare") or {}).get("summary")
    if vc:
        out.append(
            "\n## The same model-loss step in two environments (alternating fresh processes)\n\n"
            + benchlib.markdown_table(
                [{"venv": k, "versions": v["versions"], "step": v["median_step_s"]} for k, v in vc.items()],
                [("venv", "environment"), ("versions", "torch transformers peft"), ("step", "median step s")],
            )
        )
    w = result.get("whole_run") or {}
    if w:
        phase_rows = [{"phase": k, "s": v} for k, v in (w.get("phase_s") or {}).items()]
        out.append(
            f"\n## A whole `kubetune run` ({w.get('rows')} rows, {w.get('steps')} steps), wall time by "
            "runner phase (pyinstrument call tree in profile-kubetune.txt)\n\n"
            + benchlib.markdown_table(phase_rows, [("phase", "runner phase"), ("s", "seconds")])
        )
    out.append("\n## Machine\n\n" + benchlib.machine_markdown(result["machine"]))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--profile-rows", type=int, default=8)
    ap.add_argument("--skip-whole-run", action="store_true")
    ap.add_argument("--skip-loss-path", action="store_true")
    ap.add_argument("--compare-python", help="also time the model_loss step under this interpreter (another venv)")
    ap.add_argument(
        "--pyspy",
        nargs="*",
        default=[],
        metavar="LABEL=RAW",
        help="py-spy `record --format raw` outputs to summarize, e.g. "
        "'kubetune run (steady-state training)=bench/.work/pyspy/kubetune.txt'",
    )
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--variant-out", type=Path, help=argparse.SUPPRESS)
    p = ap.parse_args(argv)
    if p.variant:  # child process of the loss-path comparison
        p.variant_out.write_text(json.dumps(one_variant(p.variant, p.model_dir, p.steps, p.rows, p.cutoff)))
        return 0
    from kubetune.trainer.models.loader import gguf_to_folder

    WORK.mkdir(parents=True, exist_ok=True)
    model_dir, _ = gguf_to_folder(GGUF, CACHE)
    result: dict[str, Any] = {
        "benchmark": "profile",
        "machine": benchlib.machine_info(
            note="2 vCPUs shared with other engineers' processes; compare variants with each other, not across runs"
        ),
        "settings": {"rows": p.rows, "cutoff": p.cutoff, "steps": p.steps, "reps": p.reps},
    }
    result["pyspy"] = [
        {"what": label, **summarize_pyspy(Path(path).read_text())}
        for label, _, path in (item.rpartition("=") for item in p.pyspy)
    ]
    if not p.skip_loss_path:
        result["loss_path"] = loss_path(model_dir, p)
    if p.compare_python:
        result["venv_compare"] = venv_compare(model_dir, p)
    if not p.skip_whole_run:
        result["whole_run"] = whole_run(model_dir, p)
    findings = benchlib.RESULTS_DIR / "profile-findings.md"
    if findings.exists():
        result["findings_md"] = findings.read_text(encoding="utf-8")
    _, md = benchlib.write_results("profile", result, render(result), p.out)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
