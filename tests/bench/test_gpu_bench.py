"""bench/gpu.sh: the MFU arithmetic, the step clock's rate, and the CPU smoke run of kubetune's own trainer."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def gpu():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("gpu_bench")
    finally:
        sys.path.remove(str(BENCH))


def test_nemo_formula_matches_a_hand_count_for_llama_8b(gpu):
    """Megatron's count for Llama-3.1-8B at 4096 tokens, per token, worked out by hand."""
    shape = gpu.SHAPES["8b"]
    h, f, layers, vocab = 4096, 14336, 32, 128256
    by_hand = layers * h * h * (12 + 12 * 8 / 32 + 18 * f / h + 12 * 4096 / h) + 6 * h * vocab
    assert gpu.nemo_flops_per_token(shape, 4096) == pytest.approx(by_hand)
    # the attention term grows with the sequence; the 6N convention does not see it
    assert gpu.nemo_flops_per_token(shape, 8192) > gpu.nemo_flops_per_token(shape, 4096)
    # at short sequences it sits near 6N (every weight counted as trained)
    n = gpu.matmul_params(shape)
    assert gpu.nemo_flops_per_token(shape, 128) == pytest.approx(6 * n, rel=0.05)


def test_lora_mfu_by_both_conventions(gpu):
    shape = gpu.SHAPES["1b"]
    n, n_lora = gpu.matmul_params(shape), gpu.lora_params(shape, 16)
    ours = gpu.mfu(10_000, gpu.flops_per_token("lora", n, n_lora), 989.0)
    nemo = gpu.mfu(10_000, gpu.nemo_flops_per_token(shape, 2048), 989.0)
    assert 0 < ours < nemo  # NeMo counts weight gradients LoRA never computes, and attention


def test_timed_rate_skips_the_warm_up_steps(gpu):
    # step 1 is slow (compilation, allocator warm-up); steps 2-4 take 1 s and 100 tokens each
    points = [(0.0, 1, 100), (10.0, 2, 200), (11.0, 3, 300), (12.0, 4, 400)]
    tps, step_s = gpu.timed_rate(points, warmup=2)
    assert tps == pytest.approx(100.0) and step_s == pytest.approx(1.0)
    with pytest.raises(ValueError, match="run more steps"):
        gpu.timed_rate(points, warmup=4)


def test_each_case_is_compared_with_the_bare_loop_of_its_kind(gpu):
    rows = [
        {"shape": "1b", "method": "lora", "packed": True, "tokens_per_s": 50.0},
        {"shape": "8b", "method": "lora", "packed": True, "tokens_per_s": 5.0},
    ]
    gpu.with_ceiling(rows, [{"shape": "1b", "method": "lora", "packed": True, "tokens_per_s": 100.0}])
    assert rows[0]["of_ceiling"] == 0.5 and "of_ceiling" not in rows[1]


def test_the_gpu_plan_runs_the_product_with_the_kernel_switches(gpu):
    cases = gpu.product_plan(smoke=False)
    assert {c.shape for c in cases} == {"1b", "8b"} and all(c.cutoff == 4096 for c in cases)
    assert {c.method for c in cases} == {"lora", "full"} and {c.packed for c in cases} == {True, False}
    assert {"liger"} in [set(c.kernels) for c in cases] and {"chunked_loss"} in [set(c.kernels) for c in cases]
    assert len({c.name for c in cases}) == len(cases)


@pytest.mark.slow
def test_smoke_run_trains_through_kubetunes_trainer(tmp_path):
    """`bash bench/gpu.sh OUT --smoke`: FineTuneJobs through kubetune.trainer.runner.run on CPU, results written."""
    out = tmp_path / "gpu"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), str(out), "--smoke"], capture_output=True, text=True, timeout=1800, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "gpu.json").read_text())
    assert result["smoke"] is True and len(result["cases"]) == 3
    for row in result["cases"]:
        assert "error" not in row, row
        assert row["path"] == "kubetune" and row["tokens_per_s"] > 0 and row["loss"] is not None
        assert row["peak_rss_gib"] > 0
    by_name = {r["case"]: r for r in result["cases"]}
    assert by_name["tiny-lora-packed-auto-chunkedloss"]["kernels"] == ["chunked_loss"]
    assert by_name["tiny-full-packed-eager"]["attention"] == "eager"
    assert by_name["tiny-lora-padded-auto"]["attention"] == "sdpa"  # auto on a CPU
    assert all("tokens_per_s" in r for r in result["ceiling"])
    assert "kubetune's trainer" in (out / "gpu.md").read_text()
