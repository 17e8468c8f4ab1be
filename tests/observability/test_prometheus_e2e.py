"""A real Prometheus scrapes a live `kubetune run` (and the operator's metrics endpoint); then every
query of every dashboard panel runs through Prometheus' HTTP API and must return data.

One training run (module fixture) also checks what the run leaves behind: the curves PNGs and
the TensorBoard / MLflow files of spec.training.reportTo, all listed in the manifest.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import metrics as names
from tests.conftest import write_job
from tests.observability.tools import ALERTS, ROOT, dashboard, panel_queries, prometheus, promtool, substitute

pytestmark = pytest.mark.slow

JOB = "obs-e2e"
NAMESPACE = "default"
MAX_STEPS = 30
SCRAPE = 1.0  # seconds
RELOADED = "Completed loading of configuration file"  # Prometheus' log line, at start and on SIGHUP
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval: max(4 x scrape interval, step + scrape interval)

OPERATOR_DRIVER = """
import sys, time
from prometheus_client import start_http_server
from kubetune.operator import metrics
server, _ = start_http_server(0, addr="127.0.0.1", registry=metrics.REGISTRY)  # as metrics.serve, on a port it binds
print("serving on port", server.server_port, flush=True)
metrics.observe_phase("default", "obs-e2e", "Running")
metrics.observe_phase("default", "older-job", "Succeeded")
metrics.observe_evaluation("default", "obs-e2e", {"promoted": True,  # status.evaluation of the job
    "base": {"evalLoss": 3.1, "perplexity": 22.2, "ruleScore": 0.0},
    "trained": {"evalLoss": 0.4, "perplexity": 1.5, "ruleScore": 1.0}})
i = 0
while True:
    with metrics.RECONCILE_SECONDS.labels(handler="reconcile").time():
        time.sleep(0.01)
    if i % 4 == 0:
        metrics.API_ERRORS.labels(verb="patch", code="409").inc()
    metrics.observe_cost("default", "obs-e2e", "H100-80GB", {"gpuSeconds": 8.0 * i, "nodeSeconds": 1.0 * i,
                         "estimatedCost": 2.5 * 8.0 * i / 3600, "tokensPerGpuHour": 1.0e6})
    i += 1
    time.sleep(0.25)
"""


def free_port() -> int:
    """For the trainer's --metrics-port, which Prometheus' config names before the run starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def said(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> re.Match[str]:
    """Wait until the process wrote a line matching ``pattern`` (its port, once bound) to its log."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)


def http_json(url: str, params: dict[str, Any] | None = None) -> Any:
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{exc.code} from Prometheus for {params}: {exc.read().decode()}") from None


@dataclass
class Scraped:
    api: str
    start: float
    live_at: float  # a moment the trainer target was up (for instant queries)
    end: float
    run: subprocess.CompletedProcess[str]
    out_dir: Path

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        body = http_json(
            f"{self.api}/api/v1/query_range", {"query": expr, "start": self.start, "end": self.end, "step": SCRAPE}
        )
        assert body["status"] == "success", body
        return body["data"]["result"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        body = http_json(f"{self.api}/api/v1/query", {"query": expr, "time": at or self.live_at})
        assert body["status"] == "success", body
        return body["data"]["result"]


def _start(cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True, **kw)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def write_config(work: Path, trainer_port: int, operator_port: int) -> None:
    (work / "prometheus.yml").write_text(f"""
global:
  scrape_interval: {SCRAPE:g}s
  evaluation_interval: {SCRAPE:g}s
rule_files: ["{ALERTS}"]
scrape_configs:
  - job_name: kubetune-trainer
    honor_labels: true   # as the chart's PodMonitor: keep the trainer's job/namespace labels
    static_configs: [{{targets: ["127.0.0.1:{trainer_port}"]}}]
  - job_name: kubetune-operator
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{operator_port}"]}}]
""")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory, tiny_model_dir, cache_dir) -> Iterator[Scraped]:
    work = tmp_path_factory.mktemp("obs-e2e")
    env = {
        **os.environ,
        "KUBETUNE_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "KUBETUNE_METRICS_LINGER_SECONDS": str(3 * SCRAPE),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT)]),
    }
    procs = [_start([sys.executable, "-c", OPERATOR_DRIVER], work / "operator.log", env=env)]
    try:
        yield from _scrape(work, procs, env, tiny_model_dir, cache_dir)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _scrape(
    work: Path, procs: list[subprocess.Popen[bytes]], env: dict[str, str], tiny_model_dir: Path, cache_dir: Path
) -> Iterator[Scraped]:
    operator_port = int(said(work / "operator.log", r"serving on port (\d+)", procs[0])[1])
    trainer_port = free_port()
    write_config(work, trainer_port, operator_port)
    check = subprocess.run(
        [promtool(), "check", "config", str(work / "prometheus.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr

    shutil.copy(ROOT / "examples" / "data" / "identity.json", work / "identity.json")
    job_file = write_job(
        work / "job.yaml",
        {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": MAX_STEPS,
                "batchSize": 2,
                "learningRate": 0.01,
                "cutoffLen": 64,
                "scheduler": "cosine",
                "evalSplit": 0.2,
                "evalSteps": 10,
                "reportTo": ["tensorboard", "mlflow"],
            },
            "checkpointing": {"everySteps": 10},
            "output": {"uri": "file://out"},
        },
        name=JOB,
    )

    procs.append(
        _start(
            [
                prometheus(),
                f"--config.file={work / 'prometheus.yml'}",
                "--web.listen-address=127.0.0.1:0",  # the port it binds, read back from its log
                f"--storage.tsdb.path={work / 'tsdb'}",
                "--log.level=info",
            ],
            work / "prometheus.log",
        )
    )
    api = "http://" + said(work / "prometheus.log", r'msg="Listening on" address=(\S+)', procs[-1])[1]
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(f"{api}/-/ready", timeout=2)
            break
        except OSError:
            assert time.time() < deadline, (work / "prometheus.log").read_text()
            time.sleep(0.2)
    start = time.time()
    kubetune = str(Path(sys.executable).with_name("kubetune"))
    for _attempt in range(3):
        run = subprocess.run(
            [kubetune, "run", str(job_file), "--metrics-port", str(trainer_port), "--cache-dir", str(cache_dir)],
            capture_output=True,
            text=True,
            env=env,
            cwd=work,
            timeout=420,
            check=False,
        )
        if f"runtime.metricsPort {trainer_port}: cannot listen" not in run.stdout + run.stderr:
            break
        # another process took the port since free_port(): Prometheus reloads its config with a new one
        loaded = (work / "prometheus.log").read_text().count(RELOADED)
        trainer_port = free_port()
        write_config(work, trainer_port, operator_port)
        procs[-1].send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (work / "prometheus.log").read_text().count(RELOADED) == loaded:
            assert time.monotonic() < deadline, (work / "prometheus.log").read_text()
            time.sleep(0.05)
    assert run.returncode == 0, run.stdout + run.stderr[-5000:]
    gone = time.time()
    # one more operator scrape after the trainer is gone, stored: its sample's timestamp is past that moment
    deadline = time.monotonic() + 30
    while not [
        series
        for series in http_json(f"{api}/api/v1/query", {"query": 'timestamp(up{job="kubetune-operator"})'})["data"][
            "result"
        ]
        if float(series["value"][1]) > gone
    ]:
        assert time.monotonic() < deadline, "Prometheus stopped scraping the operator"
        time.sleep(0.2)
    end = time.time()
    api_up = http_json(
        f"{api}/api/v1/query_range",
        {"query": 'up{job="kubetune-trainer"} == 1', "start": start, "end": end, "step": SCRAPE},
    )
    live = [float(t) for series in api_up["data"]["result"] for t, _ in series["values"]]
    assert len(live) >= 5, f"Prometheus scraped the trainer {len(live)} times; the run was too short to observe"
    yield Scraped(api, start, max(live), end, run, work / "out")


# ------------------------------------------------------------------------------------------ dashboard


def _finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [v for series in result for _, v in series.get("values", [series.get("value", (0, "NaN"))])]
    return [float(v) for v in values if not math.isnan(float(v))]


def test_every_dashboard_query_returns_data(scraped):
    range_ = f"{math.ceil(scraped.end - scraped.start) + 1}s"
    empty = []
    for title, ref, target in panel_queries(dashboard()):
        expr = substitute(target["expr"], namespace=NAMESPACE, job=JOB, rate_interval=RATE_INTERVAL, range_=range_)
        result = scraped.query(expr) if target.get("instant") else scraped.query_range(expr)
        if not _finite_values(result):
            empty.append(f"{title} [{ref}]: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_template_variables_find_the_run(scraped):
    namespaces = http_json(
        f"{scraped.api}/api/v1/label/namespace/values",
        {"match[]": names.PHASE, "start": scraped.start, "end": scraped.end},
    )["data"]
    jobs = http_json(
        f"{scraped.api}/api/v1/label/job/values",
        {"match[]": f'{names.PHASE}{{namespace=~"{NAMESPACE}"}}', "start": scraped.start, "end": scraped.end},
    )["data"]
    assert namespaces == [NAMESPACE] and jobs == [JOB]  # honor_labels: not exported_job


def test_scraped_values_describe_the_run(scraped):
    def values(expr: str) -> list[float]:
        return _finite_values(scraped.query_range(expr))

    sel = f'{{job="{JOB}",namespace="{NAMESPACE}"}}'
    assert max(values(names.GLOBAL_STEP + sel)) == MAX_STEPS
    assert set(values(names.TOTAL_STEPS + sel)) >= {MAX_STEPS}
    assert max(values(names.PROGRESS_RATIO + sel)) == 1.0
    losses = values(names.TRAIN_LOSS + sel)
    assert len(losses) >= 3 and all(0 < x < 20 for x in losses)
    assert values(names.EVAL_LOSS + sel)
    assert max(values(names.TOKENS_TOTAL + sel)) > MAX_STEPS  # non-padding tokens, more than one per step
    assert max(values(names.TOKENS_PER_SECOND + sel)) > 0
    import torch

    if torch.cuda.is_available():
        assert max(values(names.MFU_RATIO + sel)) > 0
        assert max(values(names.MEMORY_ALLOCATED_BYTES + f'{{job="{JOB}",device="cuda:0"}}')) > 0
    else:
        assert set(values(names.MFU_RATIO + sel)) == {0.0}  # CPU: no peak to compare with
        assert min(values(names.MEMORY_ALLOCATED_BYTES + f'{{job="{JOB}",device="cpu"}}')) > 10e6  # resident set
    assert max(values(names.CHECKPOINT_SECONDS + "_count" + sel)) >= MAX_STEPS // 10 - 1  # every 10 steps
    assert max(values(names.UPLOAD_SECONDS + "_count" + sel)) == 1
    # the trainer walked through its phases in order, ending in done
    seen = {s["metric"]["phase"] for s in scraped.query_range(f"{names.PHASE}{sel} == 1")}
    assert {"training", "done"} <= seen and "failed" not in seen
    last = scraped.query(f"{names.PHASE}{sel} == 1")
    assert [s["metric"]["phase"] for s in last] == ["done"]
    # the operator's evaluation gauges (status.evaluation): base and trained side by side, and the verdict
    evaluation = scraped.query(f'{names.JOB_EVALUATION}{{job="{JOB}",metric="eval_loss"}}')
    assert {s["metric"]["model"]: float(s["value"][1]) for s in evaluation} == {"base": 3.1, "trained": 0.4}
    assert [float(s["value"][1]) for s in scraped.query(f'{names.JOB_PROMOTED}{{job="{JOB}"}}')] == [1.0]


def test_alert_rules_evaluate_on_the_real_series_and_stay_quiet(scraped):
    """The same Prometheus loaded the chart's rules: all evaluate without errors, and the healthy run fires none."""
    deadline = time.monotonic() + 30
    while True:
        groups = http_json(f"{scraped.api}/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        states = {r["name"]: r["state"] for r in rules}
        # the operator stand-in fails a patch about once a second: that alert is on its way (for: 10m) as soon
        # as a rule evaluation has seen a non-zero rate
        if states.get("KubetuneOperatorAPIErrors") == "pending" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(rules) == 8
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    assert states.pop("KubetuneOperatorAPIErrors") == "pending"
    assert set(states.values()) == {"inactive"}, states


# ------------------------------------------------------------------------------------------ the run's files


def test_live_view_printed_step_loss_tokens_and_eta(scraped):
    # tqdm.write keeps the lines whole even with the Trainer's progress bar on the same stream
    lines = re.findall(r"^kubetune: step .*$", scraped.run.stderr, flags=re.MULTILINE)
    assert lines, scraped.run.stderr[-3000:]
    assert lines[-1].startswith(f"kubetune: step {MAX_STEPS}/{MAX_STEPS} 100% | loss ")
    assert all(
        re.fullmatch(
            r"kubetune: step \d+/\d+ +\d+% \| loss [\d.]+( \| eval [\d.]+)? \| lr [\d.e+-]+ "
            r"\| [\d.]+k? tok/s \| ETA \S+",
            line,
        )
        for line in lines
    ), lines


def test_curves_and_tracker_logs_are_published_in_the_manifest(scraped):
    from kubetune.trainer.artifacts.manifest import verify_dir

    manifest = json.loads((scraped.out_dir / "manifest.json").read_text())
    listed = {entry["path"] for entry in manifest["files"]}
    assert {"training_loss.png", "training_eval_loss.png", "training_learning_rate.png"} <= listed
    tensorboard = [p for p in listed if p.startswith("logs/tensorboard/") and "tfevents" in p]
    assert tensorboard, sorted(listed)
    mlflow_loss = [p for p in listed if p.startswith("logs/mlruns/") and p.endswith("/metrics/loss")]
    assert mlflow_loss, sorted(listed)
    # MLflow's file store: one "<timestamp> <value> <step>" line per logged loss
    rows = (scraped.out_dir / mlflow_loss[0]).read_text().split("\n")
    steps = [int(row.split()[2]) for row in rows if row.strip()]
    assert steps[-1] == MAX_STEPS and len(steps) >= MAX_STEPS // 2
    assert verify_dir(scraped.out_dir) == []
