"""Upload throughput against boto3's ``upload_file`` defaults, and the step-time cost of async checkpoints.

Usage: ``.venv/bin/python bench/upload.py [--reps 3] [--step-reps 2] [--only throughput|steps]``; writes bench/results/upload.json and .md.

1. Throughput: the same moto server (a separate process on 127.0.0.1, so client and server do not share a
   GIL) receives a 1 GB adapter-like folder (``--adapter-mib``) and a checkpoint-like folder, alternately from
   ``kubetune.trainer.storage.s3.upload_dir`` (s3transfer: every file through one TransferManager, CRC32
   flexible checksums, botocore standard retries, no SHA-256 payload signing) and from a loop of
   ``boto3.client("s3").upload_file`` with every default (TransferConfig: 8 MiB parts, 10 threads; CRC32).
   Median of ``--reps`` runs each; target: ours / boto3 ≥ 1.0.
2. Step time: a small Llama (full fine-tuning, so checkpoints carry optimizer state) trains on CPU with
   ``save_steps`` set, once saving locally only and once also uploading every checkpoint through
   :class:`CheckpointUploader` in the background. Cost = mean step time (upload) / (local only) − 1,
   measured up to the last step (the final drain is reported apart); target ≤ 5 %. The moto server runs at
   nice 19 for this part: in production the store is not on the training node.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work" / "upload"
RESULTS = BENCH / "results"
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer")]

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    return proc, url


def make_folder(root: Path, files: dict[str, int]) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            left = size
            while left:
                n = min(left, 8 * MiB)
                fh.write(os.urandom(n))
                left -= n
    return root


def workloads(adapter_mib: int) -> dict[str, dict[str, int]]:
    return {
        "adapter": {
            "adapter_model.safetensors": adapter_mib * MiB,
            "tokenizer.json": 3_500_000,
            "tokenizer_config.json": 4_000,
            "adapter_config.json": 900,
            "special_tokens_map.json": 600,
            "chat_template.jinja": 1_200,
            "trainer_log.jsonl": 40_000,
            "curves.png": 90_000,
            "manifest.json": 3_000,
        },
        "checkpoint": {
            "adapter_model.safetensors": 64 * MiB,
            "optimizer.pt": 128 * MiB,
            "scheduler.pt": 1_100,
            "rng_state.pth": 14_000,
            "trainer_state.json": 6_000,
            "training_args.bin": 5_500,
        },
    }


def bench_throughput(reps: int, adapter_mib: int) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    from kubetune.trainer.storage import s3

    baseline = boto3.client("s3")  # every default: the chain, retries, TransferConfig
    # The same defaults without SHA-256 payload signing (which botocore does over plain http only): shows how much
    # of the difference is that, and how much is one TransferManager for all files.
    unsigned = boto3.client("s3", config=Config(s3={"payload_signing_enabled": False}))
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    baseline.create_bucket(Bucket=bucket)
    ours = s3.client()
    out: dict[str, Any] = {}
    for name, files in workloads(adapter_mib).items():
        folder = make_folder(WORK / name, files)
        total = sum(files.values())
        arms = ["boto3_upload_file", "boto3_unsigned_payload", "kubetune"]
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        loads: list[float] = []
        for rep in range(reps):
            order = arms if rep % 2 == 0 else arms[::-1]
            for who in order:
                prefix = f"{name}/{who}/{rep}/"
                start = time.perf_counter()
                if who == "kubetune":
                    s3.upload_dir(ours, folder, bucket, prefix)
                else:
                    client = baseline if who == "boto3_upload_file" else unsigned
                    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                        client.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())
                times[who].append(time.perf_counter() - start)
                loads.append(os.getloadavg()[0])
                keys = [o["Key"] for o in baseline.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
                for start_i in range(0, len(keys), 1000):  # free moto's memory
                    baseline.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start_i:]]})
        med = {who: statistics.median(ts) for who, ts in times.items()}
        out[name] = {
            "bytes": total,
            "files": len(files),
            "reps": reps,
            "seconds": times,
            "loadavg_1m": loads,
            "median_mib_s": {who: round(total / MiB / t, 1) for who, t in med.items()},
            "ratio_vs_boto3": round(med["boto3_upload_file"] / med["kubetune"], 3),
            "ratio_vs_boto3_unsigned_payload": round(med["boto3_unsigned_payload"] / med["kubetune"], 3),
        }
        print(f"{name}: {out[name]['median_mib_s']} ratio {out[name]['ratio_vs_boto3']}", flush=True)
    return out


def _train(model_dir: Path, out_dir: Path, steps: int, save_steps: int, uploader: Any) -> dict[str, float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    def uploading() -> bool:
        return uploader is not None and uploader._queue.unfinished_tasks > 0

    class StepClock(TrainerCallback):
        """Times every step (the checkpoint save itself falls between steps), noting if an upload ran beside it."""

        def __init__(self) -> None:
            self.begin = self.end = self.step_start = 0.0
            self.busy_at_start = False
            self.steps: list[tuple[float, bool]] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.step_start = time.perf_counter()
            self.busy_at_start = uploading()
            if state.global_step == 1 and not self.begin:
                self.begin = self.step_start  # step 0 warms up

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.end = time.perf_counter()
            if state.global_step > 1:
                self.steps.append((self.end - self.step_start, self.busy_at_start or uploading()))

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (steps * 4, 32), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    shutil.rmtree(out_dir, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        logging_steps=1000,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    clock = StepClock()
    callbacks: list[Any] = [clock] + ([uploader] if uploader else [])
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    # the uploader is last, so its on_train_end drain runs after the clock's last on_step_end
    start = time.perf_counter()
    trainer.train()
    finished = time.perf_counter()
    out = {
        "step_s": (clock.end - clock.begin) / (steps - 1),
        "drain_s": finished - clock.end,
        "wall_s": finished - start,
    }
    # Steps after the first save vs the steps before it, in every arm: the local-only arm is the control for
    # the drift within a run (warm-up, load), so the upload's own cost is the difference between the arms.
    durations = [d for d, _ in clock.steps]  # steps 2..N
    early, late = durations[: save_steps - 1], durations[save_steps - 1 :]
    if early and late:
        out["late_vs_early"] = statistics.mean(late) / statistics.median(early) - 1
    if uploader is not None:
        # Within one run, load drift is shared: steps beside an upload vs steps alone. Kept in the JSON only: the
        # steps alone are mostly the first ones (before the first save), so warm-up biases it.
        busy = [d for d, b in clock.steps if b]
        idle = [d for d, b in clock.steps if not b]
        if busy and idle:
            base = statistics.median(idle)
            out.update(
                {
                    "steps_beside_upload": len(busy),
                    "steps_alone": len(idle),
                    "median_step_alone_s": base,
                    "mean_step_beside_upload_s": statistics.mean(busy),
                    "in_run_cost": sum(d for d, _ in clock.steps) / (len(clock.steps) * base) - 1,
                }
            )
    return out


def bench_steps(reps: int, server_pid: int) -> dict[str, Any]:
    # The store is another machine in production: here it shares the two cores, so it runs at the lowest
    # priority for this part, and its CPU is not counted as the upload's cost to the training step.
    os.setpriority(os.PRIO_PROCESS, server_pid, 19)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kubetune.trainer.storage.uploader import CheckpointUploader

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    model_dir = WORK / "model"
    if not (model_dir / "config.json").exists():
        config = LlamaConfig(
            vocab_size=8000,
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
        LlamaForCausalLM(config).save_pretrained(model_dir)
    import boto3

    bucket = f"steps-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    steps, save_steps = 41, 10
    runs: dict[str, list[dict[str, float]]] = {"local_only": [], "async_upload": []}
    for rep in range(reps):
        order = ["local_only", "async_upload"] if rep % 2 == 0 else ["async_upload", "local_only"]
        for who in order:
            uploader = (
                CheckpointUploader(f"s3://{bucket}/r{rep}", keep=2, allow=["127.0.0.1"])
                if who == "async_upload"
                else None
            )
            result = _train(model_dir, WORK / f"train-{who}", steps, save_steps, uploader)
            if uploader is not None:
                assert not uploader.errors, uploader.errors
                result["uploaded"] = len(uploader.uploaded)
            runs[who].append(result)
            result["loadavg_1m"] = os.getloadavg()[0]
            print(who, result, flush=True)
    ckpt_bytes = sum(p.stat().st_size for p in (WORK / "train-local_only").rglob("checkpoint-*/*") if p.is_file())
    med = {who: statistics.median(r["step_s"] for r in rs) for who, rs in runs.items()}
    in_run = [r["in_run_cost"] for r in runs["async_upload"] if "in_run_cost" in r]
    drift = {
        who: statistics.median(r["late_vs_early"] for r in rs if "late_vs_early" in r) for who, rs in runs.items()
    }
    return {
        "steps": steps,
        "save_steps": save_steps,
        "runs": runs,
        "loadavg_1m_after": os.getloadavg()[0],
        "in_run_cost_median": round(statistics.median(in_run), 4) if in_run else None,
        "late_vs_early_median": {k: round(v, 4) for k, v in drift.items()},
        "in_run_cost_net_of_drift": round(drift["async_upload"] - drift["local_only"], 4),
        "median_step_s": {k: round(v, 4) for k, v in med.items()},
        "checkpoint_bytes_on_disk_last2": ckpt_bytes,
        "step_time_cost": round(med["async_upload"] / med["local_only"] - 1, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--step-reps", type=int, default=2, help="runs of each arm of the step-time benchmark")
    parser.add_argument("--only", choices=["throughput", "steps"], help="run one part; keep the other's last result")
    parser.add_argument("--adapter-mib", type=int, default=1000, help="size of the adapter file (default ~1 GB)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    proc, url = start_moto()
    try:
        from importlib import metadata

        result: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "versions": {
                n: metadata.version(n) for n in ("boto3", "botocore", "s3transfer", "moto", "torch", "transformers")
            },
            "server": f"moto_server (separate process) at {url}",
            "loadavg_at_start": os.getloadavg(),
            "checksum": os.environ.get("KUBETUNE_S3_CHECKSUM", "CRC32"),
        }
        previous = json.loads((RESULTS / "upload.json").read_text()) if (RESULTS / "upload.json").exists() else {}
        for part, key, bench in (
            ("throughput", "throughput", lambda: bench_throughput(args.reps, args.adapter_mib)),
            ("steps", "async_checkpoint", lambda: bench_steps(args.step_reps, proc.pid)),
        ):
            if args.only in (None, part):
                result[key] = bench()
            elif key in previous:
                result[key] = previous[key]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "upload.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (RESULTS / "upload.md").write_text(markdown(result), encoding="utf-8")
    print((RESULTS / "upload.md").read_text())
    return 0


def markdown(result: dict[str, Any]) -> str:
    loads = [x for r in result.get("throughput", {}).values() for x in r.get("loadavg_1m", [])]
    loads += [r.get("loadavg_1m", 0) for rs in result.get("async_checkpoint", {}).get("runs", {}).values() for r in rs]
    load = f"; 1-minute load average during the runs {min(loads):.1f}–{max(loads):.1f}" if loads else ""
    header = (
        f"Machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}; {result['server']}; "
        f"kubetune: s3transfer with {result.get('checksum', 'CRC32')} checksums; medians of alternating runs"
        f"{load} (per run in upload.json: on a busy shared machine the numbers move with it more than with "
        "the upload)."
    )
    lines = [
        "# Upload benchmark",
        "",
        header,
        "",
        (
            "| workload | size (MiB) | files | boto3 upload_file, defaults (MiB/s) | same, no payload signing (MiB/s) "
            "| kubetune (MiB/s) | ratio vs defaults (target ≥ 1.0) | ratio vs no payload signing |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result.get("throughput", {}).items():
        m = r["median_mib_s"]
        lines.append(
            f"| {name} | {r['bytes'] / MiB:.1f} | {r['files']} | {m['boto3_upload_file']} "
            f"| {m.get('boto3_unsigned_payload', '–')} | {m['kubetune']} | {r['ratio_vs_boto3']} "
            f"| {r.get('ratio_vs_boto3_unsigned_payload', '–')} |"
        )
    if "async_checkpoint" in result:
        a = result["async_checkpoint"]
        drain = statistics.median(r["drain_s"] for r in a["runs"]["async_upload"])
        lines += [
            "",
            "| async checkpoint upload | value |",
            "|---|---|",
            f"| steps / save every | {a['steps']} / {a['save_steps']} |",
            f"| checkpoint size (last two, MiB) | {a['checkpoint_bytes_on_disk_last2'] / MiB:.1f} |",
            f"| median step, local saves only (s) | {a['median_step_s']['local_only']} |",
            f"| median step, saves + async upload (s) | {a['median_step_s']['async_upload']} |",
            f"| step-time cost, A/B runs (target ≤ 5 %) | {a['step_time_cost'] * 100:.1f} % |",
            *(
                [
                    (
                        f"| steps after the first save vs before it, local only / with uploads (median of runs) | "
                        f"{a['late_vs_early_median']['local_only'] * 100:+.1f} % / "
                        f"{a['late_vs_early_median']['async_upload'] * 100:+.1f} % |"
                    ),
                    f"| step-time cost within runs, net of that drift | {a['in_run_cost_net_of_drift'] * 100:+.1f} % |",
                ]
                if "in_run_cost_net_of_drift" in a
                else []
            ),
            f"| final drain after the last step (s, median) | {drain:.2f} |",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
