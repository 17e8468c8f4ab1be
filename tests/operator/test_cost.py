"""status.cost: GPU-/node-seconds from the pods' own start and finish times, tokens per GPU-hour, the price table."""

from __future__ import annotations

import argparse
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.v1alpha1 import FineTuneJobStatus
from kubetune.operator import cost
from kubetune.operator import metrics as op_metrics
from kubetune.operator.settings import add_arguments, from_args

T0 = dt.datetime(2026, 12, 2, 9, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(phase: str, start: float | None = None, end: float | None = None, running: bool = False) -> dict:
    state: dict = {}
    if running:
        state = {"running": {"startedAt": at(start)}}
    elif end is not None:
        state = {"terminated": {"startedAt": at(start), "finishedAt": at(end), "exitCode": 1}}
    elif start is not None:
        state = {"waiting": {"reason": "ContainerCreating"}}
    status = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}] if state else []}
    if start is not None:
        status["startTime"] = at(start - 5)
    return {"metadata": {"name": "p"}, "status": status}


def test_failed_attempts_and_the_running_one_all_count():
    pods = [pod("Failed", 0, 100), pod("Failed", 110, 160), pod("Running", 200, running=True), pod("Pending")]
    now = T0 + dt.timedelta(seconds=500)
    node_s, gpu_s = cost.usage(pods, gpus_per_node=8, now=now)
    assert node_s == 100 + 50 + 300
    assert gpu_s == 450 * 8
    assert cost.usage(pods, 0, now) == (450, 0)  # CPU training: no GPU-seconds


def test_status_cost_prices_throughput_and_never_goes_down():
    spec = {"resources": {"nodes": 2, "gpusPerNode": 4, "gpuType": "H100-80GB"}}
    pods = [pod("Running", 0, running=True), pod("Running", 0, running=True)]
    now = T0 + dt.timedelta(hours=1)
    status = cost.cost_status(None, spec, pods, 8000.0, {"H100-80GB": 2.5}, now)
    assert status == {
        "nodeSeconds": 7200.0,
        "gpuSeconds": 28800.0,
        "gpuHours": 8.0,
        "tokensPerGpuHour": 3600000,
        "estimatedCost": 20.0,
    }
    FineTuneJobStatus.model_validate({"cost": status})
    gone = cost.cost_status(status, spec, [], None, {}, now)  # pods garbage-collected, no price for this operator
    assert gone == {"nodeSeconds": 7200.0, "gpuSeconds": 28800.0, "gpuHours": 8.0, "tokensPerGpuHour": 3600000}
    assert "estimatedCost" not in cost.cost_status(
        None, {"resources": {"gpuType": "A100"}}, pods, None, {"H100-80GB": 2.5}, now
    )


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=20), st.integers(0, 64))
def test_usage_is_the_sum_of_intervals(intervals, gpus):
    pods = [pod("Failed", min(a, b), max(a, b)) for a, b in intervals]
    node_s, gpu_s = cost.usage(pods, gpus, T0)
    assert node_s == sum(abs(a - b) for a, b in intervals)
    assert gpu_s == node_s * gpus


@pytest.mark.parametrize(
    "text, error",
    [
        ("not json", "not a JSON object"),
        ("[1, 2]", "expected a JSON object"),
        ('{"H100": -1}', "'H100' must be a number >= 0"),
        ('{"H100": "2.5"}', "must be a number"),
        ('{"H100": true}', "must be a number"),
    ],
)
def test_bad_price_table_is_one_clear_line(text, error):
    with pytest.raises(ValueError, match=error):
        cost.parse_prices(text)


def test_price_table_flag_and_env(monkeypatch, capsys):
    monkeypatch.setenv("KUBETUNE_GPU_HOUR_PRICES", '{"H100-80GB": 2.5, "L4": 0.7}')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])).gpu_hour_prices == {"H100-80GB": 2.5, "L4": 0.7}
    with pytest.raises(SystemExit):
        parser.parse_args(["--gpu-hour-prices", '{"L4": "x"}'])
    assert "--gpu-hour-prices" in capsys.readouterr().err


def test_the_eta_projects_gpu_hours_and_cost_to_the_end_of_the_run():
    """Once the trainer has measured steps (its ETA), status.cost says what the whole run will use and cost."""
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    spec = {"resources": {"nodes": 2, "gpusPerNode": 4, "gpuType": "H100-80GB"}}
    start = (now - dt.timedelta(seconds=900)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods = [
        {"status": {"containerStatuses": [{"name": "trainer", "state": {"running": {"startedAt": start}}}]}}
        for _ in range(2)
    ]
    used = cost.cost_status(None, spec, pods, None, {"H100-80GB": 2.0}, now, eta_seconds=2700.0)
    assert used["gpuHours"] == 2.0  # 2 pods x 4 GPUs x 15 minutes
    assert used["projectedGpuHours"] == 2.0 + 8 * 2700 / 3600  # plus 45 minutes on 8 GPUs
    assert used["projectedCost"] == pytest.approx(2.0 * used["projectedGpuHours"])
    unpriced = cost.cost_status(None, spec, pods, None, {}, now, eta_seconds=2700.0)
    assert "projectedCost" not in unpriced and unpriced["projectedGpuHours"] == used["projectedGpuHours"]
    for eta in (None, 0.0, float("nan"), -5.0, float("inf")):
        assert "projectedGpuHours" not in cost.cost_status(None, spec, pods, None, {}, now, eta_seconds=eta)


def test_job_counters_only_grow():
    labels = {"namespace": "ns", "job": "cost-test", "gpu_type": "L4"}
    reg = op_metrics.REGISTRY
    op_metrics.observe_cost("ns", "cost-test", "L4", {"gpuSeconds": 100.0, "nodeSeconds": 50.0, "estimatedCost": 1.0})
    op_metrics.observe_cost("ns", "cost-test", "L4", {"gpuSeconds": 160.0, "nodeSeconds": 80.0})
    op_metrics.observe_cost("ns", "cost-test", "L4", {"gpuSeconds": 20.0, "nodeSeconds": 10.0})  # never backwards
    assert reg.get_sample_value("kubetune_job_gpu_seconds_total", labels) == 160.0
    assert reg.get_sample_value("kubetune_job_node_seconds_total", labels) == 80.0
    assert reg.get_sample_value("kubetune_job_estimated_cost", labels) == 1.0


def test_chart_price_table_reaches_the_operator(monkeypatch):
    from tests.chart.helm import helm, one, template

    objs = template({"costs": {"gpuHourPrice": {"H100-80GB": 2.5, "L4": 0.7}}})
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    monkeypatch.setenv("KUBETUNE_GPU_HOUR_PRICES", env["KUBETUNE_GPU_HOUR_PRICES"])
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])).gpu_hour_prices == {"H100-80GB": 2.5, "L4": 0.7}
    container = one(template(), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "KUBETUNE_GPU_HOUR_PRICES" not in {e["name"] for e in container.get("env", [])}  # no table: no estimate
    proc = helm("template", "r", "charts/kubetune", "--set-json", 'costs={"gpuHourPrice": {"L4": -1}}')
    assert proc.returncode != 0 and "gpuHourPrice" in proc.stderr  # the values schema refuses a negative price


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@given(junk, junk, junk)
def test_any_spec_or_previous_shape_never_raises(spec, previous, tps):
    """An invalid spec is the pass's business to report; the cost must not turn it into a retry loop."""
    spec = {"resources": spec} if not isinstance(spec, dict) else spec
    out = cost.cost_status(
        previous, spec, [pod("Running", 0, running=True)], tps, {"H100-80GB": 2.5}, T0 + dt.timedelta(seconds=60)
    )
    assert out["nodeSeconds"] == 60.0 or out["nodeSeconds"] >= 60.0


async def test_operator_reports_cost_of_every_attempt(kube_api, cluster, start_operator):
    """The real operator on the API emulator: a failed attempt and its replacement both count; -o wide columns."""
    from kubetune.api.crdgen import PRINTER_COLUMNS
    from tests.harness.emulator import FTJ
    from tests.harness.fixtures import eventually
    from tests.operator.test_lifecycle import ftj, status

    await start_operator(gpu_hour_prices={"H100-80GB": 3600.0})  # 1 per GPU-second: easy to check
    kube_api.create(
        FTJ,
        ftj("cost", resources={"nodes": 1, "gpusPerNode": 4, "gpuType": "H100-80GB"}, runPolicy={"backoffLimit": 2}),
    )
    await eventually(lambda: [p for p in cluster.pods("cost") if p["status"]["phase"] == "Running"])
    await eventually(lambda: (status(kube_api, "cost").get("cost") or {}).get("gpuSeconds", 0) >= 4, timeout=30)
    cluster.finish("cost", 0, exit_code=1, message="boom")  # retried by the Job: a second pod
    await eventually(
        lambda: (
            len(cluster.pods("cost")) == 2 and any(p["status"]["phase"] == "Running" for p in cluster.pods("cost"))
        ),
        timeout=30,
    )
    await eventually(
        lambda: (
            (status(kube_api, "cost").get("cost") or {}).get("nodeSeconds", 0)
            > cost.usage([p for p in cluster.pods("cost") if p["status"]["phase"] == "Failed"], 4, T0)[0]
        ),
        timeout=30,
    )
    cluster.finish("cost", 0)
    await eventually(lambda: status(kube_api, "cost").get("phase") == "Succeeded", timeout=30)
    pods = cluster.pods("cost")
    node_s, gpu_s = cost.usage(pods, 4, dt.datetime.now(dt.UTC))  # all terminated: now does not matter
    await eventually(lambda: status(kube_api, "cost")["cost"]["nodeSeconds"] == round(node_s, 1), timeout=30)
    final = status(kube_api, "cost")["cost"]
    assert (
        final["gpuSeconds"] == round(gpu_s, 1) == round(4 * node_s, 1)
        and final["estimatedCost"] == final["gpuSeconds"]
    )
    assert {c["jsonPath"] for c in PRINTER_COLUMNS if c.get("priority") == 1} >= {
        ".status.cost.gpuHours",
        ".status.cost.tokensPerGpuHour",
        ".status.cost.estimatedCost",
    }


async def test_a_stalled_pod_shows_in_status_and_an_event_and_is_retried(kube_api, cluster, start_operator):
    """The hang watchdog's exit 75 is retried by the Job; the operator shows the stuck frame and warns once."""
    from tests.harness.emulator import FTJ
    from tests.harness.fixtures import eventually
    from tests.operator.test_lifecycle import events, ftj, status

    await start_operator()
    kube_api.create(FTJ, ftj("hang", resources={"nodes": 1, "gpusPerNode": 1}, runPolicy={"backoffLimit": 2}))
    await eventually(lambda: [p for p in cluster.pods("hang") if p["status"]["phase"] == "Running"])
    dump = (
        "stalled: rank 0 made no optimizer step for 900 s after step 12 ... Python stacks:\n"
        'Thread 0x00007f (most recent call first):\n  File "torch/distributed/c10d.py", line 2501 in all_reduce'
    )
    cluster.finish("hang", 0, exit_code=75, message=dump)
    await eventually(
        lambda: (status(kube_api, "hang").get("lastStall") or {}).get("message", "").endswith("in all_reduce"),
        timeout=30,
    )
    await eventually(lambda: ("Warning", "TrainerStalled") in events(kube_api, "hang"), timeout=30)
    await eventually(lambda: any(p["status"]["phase"] == "Running" for p in cluster.pods("hang")), timeout=30)
    cluster.finish("hang", 0)  # the retried pod (resumed from its checkpoint) completes
    await eventually(lambda: status(kube_api, "hang").get("phase") == "Succeeded", timeout=30)
    assert events(kube_api, "hang").count(("Warning", "TrainerStalled")) == 1
    assert status(kube_api, "hang")["lastStall"]["pod"]
