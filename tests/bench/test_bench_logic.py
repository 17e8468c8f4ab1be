"""The benchmarks' pure logic: MFU math, parameter counts, medians/ratios, tables, data and token checks.

Nothing here is timed; the benchmarks themselves run from bench/ (see bench/README.md).
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def lib():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("benchlib")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def gpu():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu_bench")
    finally:
        sys.path.remove(str(BENCH))


@pytest.fixture(scope="module")
def tt():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("train_throughput")
    finally:
        sys.path.remove(str(BENCH))


# ------------------------------------------------------------------------------------------- MFU


@pytest.mark.parametrize(
    "method, n, n_lora, expected",
    [("full", 1_000, 0, 6_000.0), ("lora", 1_000, 10, 4_060.0), ("lora", 8_000_000_000, 0, 3.2e10)],
    ids=["full-6N", "lora-4N+6Nlora", "lora-no-adapter"],
)
def test_flops_per_token(gpu, method, n, n_lora, expected):
    assert gpu.flops_per_token(method, n, n_lora) == expected


def test_flops_per_token_rejects_unknown_method(gpu):
    with pytest.raises(ValueError, match="unknown method 'qlora'"):
        gpu.flops_per_token("qlora", 1)


def test_mfu_of_a_known_case(gpu):
    # 8B full fine-tuning at 10k tokens/s on a 989 TFLOP/s part: 6 * 8e9 * 1e4 / 989e12
    assert gpu.mfu(10_000, 6 * 8e9, 989.0) == pytest.approx(0.4853, abs=1e-4)
    with pytest.raises(ValueError):
        gpu.mfu(1, 1, 0)


def test_peak_lookup_by_device_name(gpu):
    assert gpu.peak_for("NVIDIA H200")[0] == 989.0
    assert gpu.peak_for("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert gpu.peak_for("Some New GPU", override=500.0) == (500.0, "--peak-tflops")
    value, source = gpu.peak_for("Some New GPU")
    assert value == 989.0 and "default" in source


def test_llama_shapes_have_the_expected_size(gpu):
    # Llama-3.1-8B has 8.03e9 parameters: matmul params + the untied input embedding
    eight_b = gpu.SHAPES["8b"]
    total = gpu.matmul_params(eight_b) + eight_b["hidden_size"] * eight_b["vocab_size"]
    assert total == pytest.approx(8.03e9, rel=0.005)
    # Llama-3.2-1B (tied head): 1.24e9
    assert gpu.matmul_params(gpu.SHAPES["1b"]) == pytest.approx(1.236e9, rel=0.005)


def test_param_counts_match_a_real_model(gpu):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = gpu.SHAPES["tiny"]
    model = LlamaForCausalLM(LlamaConfig(**shape))
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert gpu.matmul_params(shape) == linear  # the tied head is one Linear; the embedding lookup is not
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=gpu.LORA_TARGETS, task_type="CAUSAL_LM"))
    assert gpu.lora_params(shape, 8) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_sequence_lengths_are_deterministic_and_capped(gpu):
    a = gpu.sequence_lengths(64, 512)
    assert a == gpu.sequence_lengths(64, 512)
    assert all(16 <= n <= 512 for n in a) and len(set(a)) > 10
    assert gpu.padded_positions([3, 10, 5]) == 16 * 3


def test_packed_batch_keeps_sequences_apart(gpu):
    """Packed (padding-free, position ids per sequence) and padded batches give the same loss on the same
    rows: the packed attention does not cross sequence boundaries."""
    case = {"batch": 4, "cutoff": 160, "steps": 1, "warmup": 0}
    padded = gpu.run_case(
        gpu.Case("tiny", "full", False, **case), device="cpu", dtype_name="float32", attn="sdpa", peak=989.0, rank=4
    )
    packed = gpu.run_case(
        gpu.Case("tiny", "full", True, **case), device="cpu", dtype_name="float32", attn="sdpa", peak=989.0, rank=4
    )
    assert packed["non_padding_tokens_per_step"] == padded["non_padding_tokens_per_step"]
    assert packed["computed_positions_per_step"] < padded["computed_positions_per_step"]
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-4)


# ------------------------------------------------------------------------------------------- statistics


def test_alternate_interleaves_tools(lib):
    assert lib.alternate(["a", "b"], 2) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    with pytest.raises(ValueError):
        lib.alternate(["a"], 0)


def test_summarize_takes_medians_of_successful_runs(lib):
    runs = [
        {"ok": True, "tps": 10.0},
        {"ok": True, "tps": 30.0},
        {"ok": True, "tps": 20.0},
        {"ok": False, "tps": 1000.0},
    ]
    s = lib.summarize(runs, ["tps", "missing"])
    assert s == {"runs": 4, "ok_runs": 3, "tps": 20.0, "tps_min": 10.0, "tps_max": 30.0, "missing": None}


def test_ratio(lib):
    assert lib.ratio(3.0, 2.0) == 1.5
    assert lib.ratio(None, 2.0) is None and lib.ratio(1.0, 0) is None


def test_markdown_table_formats_cells(lib):
    table = lib.markdown_table(
        [{"a": 1234.5, "b": None, "c": True}, {"a": 0.01234, "b": "x|y", "c": False}],
        [("a", "A"), ("b", "B"), ("c", "C")],
    )
    assert table.splitlines() == [
        "| A | B | C |",
        "|---|---|---|",
        "| 1,234 | – | yes |",
        "| 0.0123 | x\\|y | no |",
    ]


def test_machine_info_names_the_machine(lib):
    info = lib.machine_info(note="shared")
    assert info["cpu_count"] and info["memory_gib"] and info["packages"]["torch"]
    text = lib.machine_markdown(info)
    assert "CPU:" in text and "Note: shared" in text


def test_run_measured_reports_exit_code_and_rss(lib, tmp_path):
    m = lib.run_measured([sys.executable, "-c", "b = bytearray(64 * 2**20); print('hi')"], log_file=tmp_path / "log")
    assert m.returncode == 0 and "hi" in m.output_tail
    assert m.peak_rss_mib >= 64
    failed = lib.run_measured([sys.executable, "-c", "raise SystemExit(3)"], log_file=tmp_path / "log2")
    assert failed.returncode == 3


# ------------------------------------------------------------------------------------------- throughput inputs


def test_rows_are_deterministic_with_a_length_spread(tt):
    rows = tt.make_rows(50, seed=3)
    assert rows == tt.make_rows(50, seed=3) and rows != tt.make_rows(50, seed=4)
    lengths = [len(r["output"].split()) for r in rows]
    assert min(lengths) < 30 and max(lengths) > 90
    assert all(r["system"] == tt.SYSTEM for r in rows)


def test_compare_tokens_finds_the_first_mismatch(tt):
    a = [{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3], "labels": [3]}]
    b = [{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [4], "labels": [3]}]
    assert tt.compare_tokens(a, a)["identical"]
    diff = tt.compare_tokens(a, b)
    assert not diff["identical"] and diff["first_mismatch_row"] == 1 and diff["same_labels"] == 2


def test_both_tools_get_the_same_hyperparameters(tt, tmp_path):
    import argparse

    p = argparse.Namespace(rank=16, batch=4, lr=1e-4, cutoff=256, seed=42)
    job = tt.kubetune_job("x", tmp_path / "m", tmp_path / "d", tmp_path / "o", p, packing=False)
    lf = tt.llamafactory_config(tmp_path / "m", tmp_path / "d", tmp_path / "lo", p)
    spec = job["spec"]
    assert spec["model"]["source"].removeprefix("file://") == lf["model_name_or_path"]
    assert (spec["method"]["lora"]["rank"], spec["method"]["lora"]["alpha"]) == (lf["lora_rank"], lf["lora_alpha"])
    t = spec["training"]
    assert (t["batchSize"], t["learningRate"], t["cutoffLen"], t["seed"], t["scheduler"]) == (
        lf["per_device_train_batch_size"],
        lf["learning_rate"],
        lf["cutoff_len"],
        lf["seed"],
        lf["lr_scheduler_type"],
    )
    # LLaMA-Factory checkpoints gradients unless told not to; kubetune does not by default
    assert lf["disable_gradient_checkpointing"] is True and not t.get("gradientCheckpointing")
    assert "disable_gradient_checkpointing" not in tt.llamafactory_config(
        tmp_path, tmp_path, tmp_path, p, defaults=True
    )
    # the FineTuneJob is valid against the API
    from kubetune.api.v1alpha1 import FineTuneJob

    FineTuneJob.model_validate(job)


def test_padded_tokens_estimate(tt):
    rows = [{"input_ids": [0] * n} for n in (5, 9, 17, 2)]
    assert tt.padded_tokens(rows, batch=4, seed=0) == 24 * 4
    assert math.isclose(tt.padded_tokens(rows, batch=1, seed=0), 8 + 16 + 24 + 8)


def test_pyspy_summary_counts_each_function_once_per_sample():
    sys.path.insert(0, str(BENCH))
    try:
        prof = importlib.import_module("profile_train")
    finally:
        sys.path.remove(str(BENCH))
    raw = (
        "main (x/site-packages/a.py:1);step (x/site-packages/b.py:2);step (x/site-packages/b.py:9) 3\n"
        "main (x/site-packages/a.py:1);collate (/work/main/trainer/c.py:5) 1\n"
    )
    summary = prof.summarize_pyspy(raw)
    assert summary["samples"] == 4
    shares = {r["function"]: r["share"] for r in summary["top"]}
    assert shares == {"main (a.py)": 1.0, "step (b.py)": 0.75, "collate (trainer/c.py)": 0.25}


def test_steady_step_time_skips_the_warm_up_step(tt):
    assert tt.hms_seconds("1:02:03") == 3723.0
    assert tt.steady_step_s([(3, 160.0), (1, 98.0), (2, 129.0)]) == 31.0
    assert tt.steady_step_s([(1, 98.0)]) is None
