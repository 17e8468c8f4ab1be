"""Operator at scale: many FineTuneJobs through the real operator, against the test API emulator.

    .venv/bin/python bench/operator_scale.py              # 1,000 jobs at 20/s; writes bench/results/operator_scale.*
    .venv/bin/python bench/operator_scale.py --jobs 50    # a quick look
    .venv/bin/python bench/operator_scale.py --real       # on the real control plane (tests/harness/realcluster.py)

With ``--real`` the same lifecycle runs on etcd + kube-apiserver + kube-controller-manager (the real Job
controller and garbage collector) + kube-scheduler + kwok nodes (``make tools`` builds them): the operator
authenticates with the chart ServiceAccount's token, the "trainer" exits when the bench annotates its pod
(kwok's stage writes the terminated status), and the writes per lifecycle come from the API server's audit
log (every request of the operator's ServiceAccount). Results go to ``operator_scale_real.*``.

This process runs the kmock-based API emulator and the Job controller / kubelet simulator from
tests/harness/ on 127.0.0.1; the operator (`python -m kubetune.operator --standalone -A`) runs as its
own process, as in its pod, so its RSS and CPU are its own. FineTuneJobs are created in the
emulator's store at a fixed rate (as `kubectl create` would, without a client in between). Each
job then lives its whole life: the operator creates its children, the simulated kubelet starts the
pod, the "trainer" exits 0 after ``--run-s`` seconds, the Job completes, the operator reports
Succeeded, and the FineTuneJob is deleted (finalizer released, children garbage-collected).

Measured: create→Job latency, status-update latencies (pod Running → FineTuneJob Running, Job
Complete → FineTuneJob Succeeded, delete → gone), every HTTP request the operator makes (by verb and
resource, per job), and the operator's RSS and CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib

sys.path.insert(0, str(benchlib.REPO_ROOT))
NS = "default"
JOB_NAME = re.compile(r"scale-\d{4}")
WRITE_VERBS = ("POST", "PATCH", "PUT", "DELETE")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))  # ceil(q/100 * n)
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 4),
        "p90_s": round(percentile(values, 90), 4),
        "p99_s": round(percentile(values, 99), 4),
        "max_s": round(max(values), 4),
        "mean_s": round(statistics.fmean(values), 4),
    }


def requests_per_job(counts: dict[str, int], jobs: int) -> dict[str, Any]:
    """Totals by "VERB resource" divided by the number of jobs, plus the per-verb and write totals."""
    by_verb: dict[str, int] = collections.Counter()
    for key, n in counts.items():
        by_verb[key.split(" ", 1)[0]] += n
    writes = sum(n for verb, n in by_verb.items() if verb in WRITE_VERBS)
    return {
        "by_verb_and_resource": {k: round(v / jobs, 2) for k, v in sorted(counts.items())},
        "by_verb": {k: round(v / jobs, 2) for k, v in sorted(by_verb.items())},
        "writes_per_job": round(writes / jobs, 2),
        "total_requests": sum(counts.values()),
    }


def lifecycle_writes(per_job: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Writes (POST/PATCH/PUT/DELETE) attributed to each FineTuneJob whose whole lifecycle finished."""
    writes = [
        sum(n for key, n in counts.items() if key.split(" ", 1)[0] in WRITE_VERBS) for counts in per_job.values()
    ]
    if not writes:
        return {"n": 0}
    merged: collections.Counter = collections.Counter()
    for counts in per_job.values():
        merged.update(counts)
    return {
        "n": len(writes),
        "mean": round(statistics.fmean(writes), 2),
        "p50": percentile(writes, 50),
        "max": max(writes),
        "by_request": {k: round(v / len(writes), 2) for k, v in sorted(merged.items())},
    }


def ftj_doc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "stage": "sft",
            "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "datasets": [{"name": "identity", "source": "s3://data/identity.json"}],
            "resources": {"nodes": 1, "gpusPerNode": 1},
            "output": {"uri": f"s3://out/{name}"},
        },
    }


# ------------------------------------------------------------------------------------------- the run


@dataclass
class Timeline:
    created: dict[str, float] = field(default_factory=dict)
    job_added: dict[str, float] = field(default_factory=dict)
    pod_running: dict[str, float] = field(default_factory=dict)
    ftj_running: dict[str, float] = field(default_factory=dict)
    job_complete: dict[str, float] = field(default_factory=dict)
    ftj_succeeded: dict[str, float] = field(default_factory=dict)
    delete_sent: dict[str, float] = field(default_factory=dict)
    ftj_gone: dict[str, float] = field(default_factory=dict)

    def deltas(self, start: dict[str, float], end: dict[str, float]) -> list[float]:
        return [end[k] - start[k] for k in end if k in start]


class ProcSampler:
    """RSS and CPU of one process from /proc, sampled in the background."""

    def __init__(self, pid: int):
        self.pid = pid
        self.rss_mib: list[float] = []
        self.hwm_mib = 0.0
        self.cpu_start = self.cpu_s()

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sample(self) -> None:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                self.rss_mib.append(int(line.split()[1]) / 1024)
            elif line.startswith("VmHWM:"):
                self.hwm_mib = int(line.split()[1]) / 1024


async def run(p: argparse.Namespace) -> dict[str, Any]:
    import kmock
    from tests.harness.cluster import JOBS, PODS, ClusterSimulator
    from tests.harness.emulator import FTJ, KubeEmulator, _res, kubeconfig

    @attrs.define(kw_only=True)
    class CountingEmulator(KubeEmulator):
        """The test emulator, counting every HTTP request (all of them come from the operator here)."""

        counts: collections.Counter = attrs.field(factory=collections.Counter, init=False)
        service_s: list = attrs.field(factory=list, init=False)  # time the emulator spent on each request
        per_job: collections.defaultdict = attrs.field(
            factory=lambda: collections.defaultdict(collections.Counter), init=False
        )

        async def _handle(self, request: Any) -> Any:
            if request.resource is not None and request.resource.plural is not None:
                watch = request.params.get("watch", "").lower() in ("true", "1")
                sub = f"/{request.subresource}" if request.subresource else ""
                verb = (
                    "WATCH"
                    if watch
                    else str(request.method.value if hasattr(request.method, "value") else request.method).upper()
                )
                if verb == "GET" and request.name is None:
                    verb = "LIST"
                key = f"{verb} {_res(request.resource)}{sub}"
                self.counts[key] += 1
                # which FineTuneJob the request is about: its name in the URL or, for a create, in the body
                found = JOB_NAME.search(request.name or "") or JOB_NAME.search(
                    (request.body or b"").decode(errors="replace") if verb == "POST" else ""
                )
                if found:
                    self.per_job[found.group(0)][key] += 1
                if not watch:
                    started = time.perf_counter()
                    response = await super()._handle(request)
                    self.service_s.append(time.perf_counter() - started)
                    return response
            return await super()._handle(request)

    loop = asyncio.get_running_loop()
    tl = Timeline()
    api = CountingEmulator()

    def seen(resource: str, event: dict[str, Any]) -> None:
        now = time.perf_counter()
        obj, kind = event["object"], event["type"]
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if resource == JOBS and kind == "ADDED":
            tl.job_added.setdefault(name, now)
        elif resource == JOBS and any(
            c.get("type") == "Complete" and c.get("status") == "True" for c in status.get("conditions") or []
        ):
            tl.job_complete.setdefault(name, now)
        elif resource == PODS and status.get("phase") == "Running":
            job = (obj["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
            if job and job not in tl.pod_running:
                tl.pod_running[job] = now
                loop.call_later(p.run_s, finish, job)
        elif resource == FTJ:
            phase = status.get("phase")
            if kind == "DELETED":
                tl.ftj_gone.setdefault(name, now)
            elif phase == "Running":
                tl.ftj_running.setdefault(name, now)
            elif phase == "Succeeded" and name not in tl.ftj_succeeded:
                tl.ftj_succeeded[name] = now
                loop.call_later(p.hold_s, delete, name)

    def finish(job: str) -> None:
        try:
            sim.finish(job, 0)
        except AssertionError:
            loop.call_later(0.2, finish, job)  # pod not Running any more / yet: try again shortly

    def delete(name: str) -> None:
        tl.delete_sent[name] = time.perf_counter()
        api.delete(FTJ, NS, name)

    api.on_change.append(seen)
    work = benchlib.WORK_DIR / "operator"
    work.mkdir(parents=True, exist_ok=True)
    async with api, kmock.Server(api) as server:
        kc = work / "kubeconfig.yaml"
        kc.write_text(yaml.safe_dump(kubeconfig(str(server.url).rstrip("/"))))
        env = dict(os.environ, KUBECONFIG=str(kc), PYTHONWARNINGS="ignore")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = (work / "operator.log").open("wb")
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measured loop
            [
                sys.executable,
                "-m",
                "kubetune.operator",
                "--standalone",
                "-A",
                "--metrics-port",
                "0",
                "--health-port",
                "0",
                "--sync-interval",
                str(p.sync_interval),
                "--trainer-metrics-port",
                str(p.trainer_metrics_port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        sampler = ProcSampler(proc.pid)
        try:
            async with ClusterSimulator(api, tick=p.tick) as sim:
                t_ready = time.perf_counter()
                while not api.watchers[FTJ]:
                    if time.perf_counter() - t_ready > p.startup_timeout_s:
                        raise SystemExit(
                            f"the operator opened no watches in {p.startup_timeout_s} s; requests so far: "
                            f"{dict(api.counts)}; see {work / 'operator.log'}"
                        )
                    if proc.poll() is not None:
                        raise SystemExit(f"the operator exited ({proc.returncode}); see {work / 'operator.log'}")
                    await asyncio.sleep(0.05)
                startup_s = time.perf_counter() - t_ready
                await asyncio.sleep(3.0)  # the other watches (jobs, pods, events) open right after
                sampler.sample()
                idle_rss = sampler.rss_mib[-1]
                api.counts.clear()
                api.service_s.clear()
                cpu0 = sampler.cpu_s()
                t0 = time.perf_counter()
                names = [f"scale-{i:04d}" for i in range(p.jobs)]
                next_sample = t0
                for i, name in enumerate(names):
                    due = t0 + i / p.rate
                    if (delay := due - time.perf_counter()) > 0:
                        await asyncio.sleep(delay)
                    tl.created[name] = time.perf_counter()
                    api.create(FTJ, ftj_doc(name))
                    if time.perf_counter() >= next_sample:
                        sampler.sample()
                        next_sample += 0.5
                created_s = time.perf_counter() - t0
                deadline = time.perf_counter() + p.timeout_s
                while len(tl.ftj_gone) < p.jobs and time.perf_counter() < deadline:
                    sampler.sample()
                    await asyncio.sleep(0.5)
                sampler.sample()
                total_s = time.perf_counter() - t0
                cpu_s = sampler.cpu_s() - cpu0
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()

    done = len(tl.ftj_gone)
    return {
        "jobs": p.jobs,
        "rate_per_s": p.rate,
        "achieved_rate_per_s": round(p.jobs / created_s, 2),
        "completed_lifecycles": done,
        "operator_startup_s": round(startup_s, 2),
        "total_s": round(total_s, 1),
        "latency": {
            "create_to_job": latency_summary(tl.deltas(tl.created, tl.job_added)),
            "pod_running_to_ftj_running": latency_summary(tl.deltas(tl.pod_running, tl.ftj_running)),
            "job_complete_to_ftj_succeeded": latency_summary(tl.deltas(tl.job_complete, tl.ftj_succeeded)),
            "delete_to_gone": latency_summary(tl.deltas(tl.delete_sent, tl.ftj_gone)),
            "create_to_succeeded": latency_summary(tl.deltas(tl.created, tl.ftj_succeeded)),
            "emulator_service_per_request": latency_summary(api.service_s),
        },
        "requests": requests_per_job(dict(api.counts), p.jobs),
        "writes_per_lifecycle": lifecycle_writes({n: dict(api.per_job[n]) for n in tl.ftj_gone}),
        "operator": {
            "idle_rss_mib": round(idle_rss, 1),
            "peak_rss_mib": round(sampler.hwm_mib, 1),
            "max_sampled_rss_mib": round(max(sampler.rss_mib), 1),
            "cpu_s": round(cpu_s, 2),
            "cpu_percent_of_one_core": round(100 * cpu_s / total_s, 1),
        },
        "settings": {"run_s": p.run_s, "hold_s": p.hold_s, "sync_interval_s": p.sync_interval, "tick_s": p.tick},
    }


async def run_real(p: argparse.Namespace) -> dict[str, Any]:
    """The lifecycle of ``p.jobs`` FineTuneJobs on the real control plane (see the module docstring)."""
    import threading

    from tests.harness.realcluster import FTJ, OPERATOR_USER, ControlPlane, RealApi, resource_path

    work = benchlib.WORK_DIR / "operator-real"
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    nodes = max(4, -(-p.jobs // 100))
    cp = ControlPlane(work, gpu_nodes=nodes, gpus_per_node=100, pods_per_node=250)
    t_cp = time.perf_counter()
    cp.start()
    controlplane_start_s = time.perf_counter() - t_cp
    ns = "bench"
    cp.create_namespace(ns)
    api: RealApi = cp.api
    loop = asyncio.get_running_loop()
    tl = Timeline()
    stop = threading.Event()
    lock = threading.Lock()
    finished: set[str] = set()

    def ftj_real(name: str) -> dict[str, Any]:
        doc = ftj_doc(name)
        doc["metadata"]["namespace"] = ns
        return doc

    def finish(pod_name: str, job: str) -> None:
        try:
            api.update("v1/pods", ns, pod_name, {"metadata": {"annotations": {"kubetune.test/exit-code": "0"}}})
        except Exception:  # noqa: BLE001, S110 - the pod is gone (deleted with its FineTuneJob)
            pass

    def delete(name: str) -> None:
        tl.delete_sent[name] = time.perf_counter()
        try:
            api.delete(FTJ, ns, name)
        except Exception:  # noqa: BLE001, S110 - the next watch event retries nothing: counted as not gone
            pass

    def on_event(resource: str, event: dict[str, Any]) -> None:
        now = time.perf_counter()
        obj, kind = event["object"], event["type"]
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        with lock:
            if resource == "batch/v1/jobs":
                if kind == "ADDED":
                    tl.job_added.setdefault(name, now)
                if any(
                    c.get("type") == "Complete" and c.get("status") == "True" for c in status.get("conditions") or []
                ):
                    tl.job_complete.setdefault(name, now)
            elif resource == "v1/pods" and status.get("phase") == "Running" and kind != "DELETED":
                job = (obj["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
                if job and job not in finished:
                    finished.add(job)
                    tl.pod_running.setdefault(job, now)
                    loop.call_soon_threadsafe(loop.call_later, p.run_s, finish, name, job)
            elif resource == FTJ:
                phase = status.get("phase")
                if kind == "DELETED":
                    tl.ftj_gone.setdefault(name, now)
                elif phase == "Running":
                    tl.ftj_running.setdefault(name, now)
                elif phase == "Succeeded" and name not in tl.ftj_succeeded:
                    tl.ftj_succeeded[name] = now
                    loop.call_soon_threadsafe(loop.call_later, p.hold_s, delete, name)

    errors: collections.Counter = collections.Counter()

    def watch(resource: str) -> None:
        """List, then watch from the last resourceVersion seen; re-list only on 410 Gone. A FineTuneJob whose
        delete was sent and that a re-list no longer shows is gone (its DELETED event fell between watches)."""
        rv = None
        while not stop.is_set():
            try:
                if rv is None:
                    doc = api.request("GET", resource_path(resource, ns))
                    rv = doc["metadata"]["resourceVersion"]
                    if resource == FTJ:
                        present = {o["metadata"]["name"] for o in doc.get("items") or []}
                        now = time.perf_counter()
                        with lock:
                            for name in list(tl.delete_sent):
                                if name not in present:
                                    tl.ftj_gone.setdefault(name, now)
                    for obj in doc.get("items") or []:
                        on_event(resource, {"type": "ADDED", "object": obj})
                for event in api.watch(resource, ns, rv, timeout=30):
                    if event["type"] == "ERROR":
                        rv = None  # 410 Gone: re-list
                        break
                    rv = event["object"]["metadata"]["resourceVersion"]
                    on_event(resource, event)
                    if stop.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - counted, then re-listed
                errors[f"{resource}: {type(exc).__name__}: {exc}"[:200]] += 1
                rv = None
                time.sleep(0.2)

    watchers = [threading.Thread(target=watch, args=(r,), daemon=True) for r in (FTJ, "batch/v1/jobs", "v1/pods")]
    for w in watchers:
        w.start()
    env = dict(os.environ, KUBECONFIG=str(cp.operator_kubeconfig), PYTHONWARNINGS="ignore")
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log = (work / "operator.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - the operator runs beside this loop for the whole run
        [
            sys.executable,
            "-m",
            "kubetune.operator",
            "--standalone",
            "--namespace",
            ns,
            "--metrics-port",
            "0",
            "--health-port",
            "0",
            "--sync-interval",
            str(p.sync_interval),
            "--trainer-metrics-port",
            str(p.trainer_metrics_port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    sampler = ProcSampler(proc.pid)
    try:
        t_ready = time.perf_counter()
        # the operator is up once its FineTuneJob watch is open: the audit log records it
        while not any(
            e["verb"] == "watch" and (e.get("objectRef") or {}).get("resource") == "finetunejobs"
            for e in cp.audit(0, user=OPERATOR_USER)
        ):
            if time.perf_counter() - t_ready > p.startup_timeout_s:
                raise SystemExit(
                    f"the operator opened no watch in {p.startup_timeout_s} s; see {work / 'operator.log'}"
                )
            if proc.poll() is not None:
                raise SystemExit(f"the operator exited ({proc.returncode}); see {work / 'operator.log'}")
            await asyncio.sleep(0.2)
        startup_s = time.perf_counter() - t_ready
        await asyncio.sleep(3.0)
        sampler.sample()
        idle_rss = sampler.rss_mib[-1]
        mark = cp.audit_mark()
        cpu0 = sampler.cpu_s()
        t0 = time.perf_counter()
        names = [f"scale-{i:04d}" for i in range(p.jobs)]
        next_sample = t0
        # creates are sent on schedule, each in its own worker (as independent clients would), not one
        # after the other: a slow answer must not lower the rate the operator sees
        from concurrent.futures import ThreadPoolExecutor

        sender = ThreadPoolExecutor(max_workers=16, thread_name_prefix="create")
        sent = []
        for i, name in enumerate(names):
            due = t0 + i / p.rate
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tl.created[name] = time.perf_counter()
            sent.append(loop.run_in_executor(sender, api.create, FTJ, ftj_real(name)))
            if time.perf_counter() >= next_sample:
                sampler.sample()
                next_sample += 0.5
        await asyncio.gather(*sent)
        sender.shutdown()
        created_s = time.perf_counter() - t0
        deadline = time.perf_counter() + p.timeout_s
        while len(tl.ftj_gone) < p.jobs and time.perf_counter() < deadline:
            sampler.sample()
            await asyncio.sleep(0.5)
        sampler.sample()
        total_s = time.perf_counter() - t0
        cpu_s = sampler.cpu_s() - cpu0
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        stop.set()
        audit = cp.audit(mark if "mark" in locals() else 0, user=OPERATOR_USER)
        cp.stop()

    verbs = {
        "create": "POST",
        "patch": "PATCH",
        "update": "PUT",
        "delete": "DELETE",
        "get": "GET",
        "list": "LIST",
        "watch": "WATCH",
        "deletecollection": "DELETE",
    }
    counts: collections.Counter = collections.Counter()
    per_job: collections.defaultdict = collections.defaultdict(collections.Counter)
    codes: collections.Counter = collections.Counter()
    for e in audit:
        ref = e.get("objectRef") or {}
        if not ref.get("resource"):
            continue
        res = (
            f"{ref['apiGroup']}/{ref.get('apiVersion', '')}/"
            if ref.get("apiGroup")
            else f"{ref.get('apiVersion', 'v1')}/"
        )
        key = f"{verbs.get(e['verb'], e['verb'].upper())} {res}{ref['resource']}" + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        counts[key] += 1
        codes[str((e.get("responseStatus") or {}).get("code"))] += 1
        found = JOB_NAME.search(ref.get("name") or "")
        if found:
            per_job[found.group(0)][key] += 1
    done = len(tl.ftj_gone)
    return {
        "backend": "real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok)",
        "jobs": p.jobs,
        "rate_per_s": p.rate,
        "achieved_rate_per_s": round(p.jobs / created_s, 2),
        "completed_lifecycles": done,
        "operator_startup_s": round(startup_s, 2),
        "total_s": round(total_s, 1),
        "controlplane_start_s": round(controlplane_start_s, 1),
        "kwok_nodes": nodes,
        "latency": {
            "create_to_job": latency_summary(tl.deltas(tl.created, tl.job_added)),
            "pod_running_to_ftj_running": latency_summary(tl.deltas(tl.pod_running, tl.ftj_running)),
            "job_complete_to_ftj_succeeded": latency_summary(tl.deltas(tl.job_complete, tl.ftj_succeeded)),
            "delete_to_gone": latency_summary(tl.deltas(tl.delete_sent, tl.ftj_gone)),
            "create_to_succeeded": latency_summary(tl.deltas(tl.created, tl.ftj_succeeded)),
        },
        "requests": requests_per_job(dict(counts), p.jobs),
        "response_codes": dict(codes),
        "bench_watch_errors": dict(errors),
        "writes_per_lifecycle": lifecycle_writes({n: dict(per_job[n]) for n in tl.ftj_gone}),
        "operator": {
            "idle_rss_mib": round(idle_rss, 1),
            "peak_rss_mib": round(sampler.hwm_mib, 1),
            "max_sampled_rss_mib": round(max(sampler.rss_mib), 1),
            "cpu_s": round(cpu_s, 2),
            "cpu_percent_of_one_core": round(100 * cpu_s / total_s, 1),
        },
        "settings": {"run_s": p.run_s, "hold_s": p.hold_s, "sync_interval_s": p.sync_interval},
    }


def render_real(result: dict[str, Any], emulated: dict[str, Any] | None) -> str:
    r = result["result"]
    lat, op, wl, req = r["latency"], r["operator"], r["writes_per_lifecycle"], r["requests"]
    e = (emulated or {}).get("result") or {}
    el, eo, ew = e.get("latency", {}), e.get("operator", {}), e.get("writes_per_lifecycle", {})
    rows = [
        {
            "m": "jobs (completed lifecycles)",
            "real": f"{r['jobs']} ({r['completed_lifecycles']})",
            "emu": f"{e.get('jobs')} ({e.get('completed_lifecycles')})" if e else "-",
        },
        {
            "m": "create rate / s (achieved)",
            "real": f"{r['rate_per_s']} ({r['achieved_rate_per_s']})",
            "emu": f"{e.get('rate_per_s')} ({e.get('achieved_rate_per_s')})" if e else "-",
        },
    ]
    for k in (
        "create_to_job",
        "pod_running_to_ftj_running",
        "job_complete_to_ftj_succeeded",
        "delete_to_gone",
        "create_to_succeeded",
    ):
        for q in ("p50_s", "p99_s"):
            rows.append(
                {
                    "m": f"{k.replace('_', ' ')} {q[:3]} (s)",
                    "real": lat.get(k, {}).get(q),
                    "emu": el.get(k, {}).get(q, "-"),
                }
            )
    rows += [
        {"m": "writes per lifecycle, attributed by name (mean)", "real": wl.get("mean"), "emu": ew.get("mean", "-")},
        {
            "m": "all operator writes / jobs",
            "real": req["writes_per_job"],
            "emu": e.get("requests", {}).get("writes_per_job", "-"),
        },
        {"m": "operator peak RSS (MiB)", "real": op["peak_rss_mib"], "emu": eo.get("peak_rss_mib", "-")},
        {"m": "operator CPU (s)", "real": op["cpu_s"], "emu": eo.get("cpu_s", "-")},
    ]
    table = benchlib.markdown_table(rows, [("m", "measure"), ("real", "real control plane"), ("emu", "emulator")])
    req_table = benchlib.markdown_table(
        [{"req": k, "n": v} for k, v in req["by_verb_and_resource"].items()],
        [("req", "request (audit log)"), ("n", "per job")],
    )
    return (
        "# Operator at scale on the real control plane\n\n"
        f"`.venv/bin/python bench/operator_scale.py --real --jobs {r['jobs']} --rate {r['rate_per_s']}` — "
        f"{r['backend']}, {r['kwok_nodes']} kwok nodes; the operator as its own process with the chart "
        f"ServiceAccount's token (real RBAC). Control plane start {r['controlplane_start_s']} s, operator start "
        f"{r['operator_startup_s']} s, run {r['total_s']} s. The emulator column is bench/results/operator_scale.json "
        "(same lifecycle; the emulator and simulated kubelet share the bench process).\n\n"
        f"{table}\n"
        f"Requests of the operator's ServiceAccount from the audit log, divided by the {r['jobs']} jobs (by verb "
        f"{req['by_verb']}; response codes {r['response_codes']}):\n\n{req_table}\n"
        f"Writes attributed to each finished lifecycle by object name (Events have generated names and are counted "
        f"only in the per-job totals): {wl.get('by_request')}.\n\n"
        f"Settings: {r['settings']}. Everything (etcd, the API server, the controllers, kwok, the operator and this "
        "bench) shares the machine below.\n\n## Machine\n\n" + benchlib.machine_markdown(result["machine"])
    )


def render(result: dict[str, Any]) -> str:
    r = result["result"]
    lat = r["latency"]
    lat_rows = [{"what": k.replace("_", " "), **v} for k, v in lat.items()]
    lat_table = benchlib.markdown_table(
        lat_rows,
        [
            ("what", "latency"),
            ("n", "n"),
            ("p50_s", "p50 s"),
            ("p90_s", "p90 s"),
            ("p99_s", "p99 s"),
            ("max_s", "max s"),
        ],
    )
    req = r["requests"]
    wl = r["writes_per_lifecycle"]
    req_table = benchlib.markdown_table(
        [{"req": k, "n": v} for k, v in req["by_verb_and_resource"].items()], [("req", "request"), ("n", "per job")]
    )
    op = r["operator"]
    targets = benchlib.markdown_table(
        [
            {
                "t": "create→Job p99 ≤ 1 s",
                "v": lat["create_to_job"].get("p99_s"),
                "met": (lat["create_to_job"].get("p99_s") or 99) <= 1.0,
            },
            {
                "t": "≤ 10 writes per job lifecycle (mean over finished lifecycles)",
                "v": wl.get("mean"),
                "met": wl.get("mean") is not None and wl["mean"] <= 10,
            },
            {"t": "operator RSS ≤ 150 MiB", "v": op["peak_rss_mib"], "met": op["peak_rss_mib"] <= 150},
        ],
        [("t", "target"), ("v", "measured"), ("met", "met")],
    )
    return (
        "# Operator at scale (API emulator + simulated kubelet)\n\n"
        f"`.venv/bin/python bench/operator_scale.py` — {r['jobs']} FineTuneJobs created at {r['rate_per_s']}/s "
        f"(achieved {r['achieved_rate_per_s']}/s); {r['completed_lifecycles']} full lifecycles (create → Running → "
        f"Succeeded → delete) in {r['total_s']} s.\n\n{targets}\n{lat_table}\n"
        f"Operator: peak RSS {op['peak_rss_mib']} MiB (idle {op['idle_rss_mib']} MiB), CPU {op['cpu_s']} s "
        f"({op['cpu_percent_of_one_core']}% of one core over the run).\n\n"
        f"Writes attributed to each finished lifecycle: mean {wl.get('mean')}, p50 {wl.get('p50')}, max "
        f"{wl.get('max')} over {wl.get('n')} jobs; by request: {wl.get('by_request')}.\n\n"
        f"All API requests made by the operator divided by the {r['jobs']} jobs created ({req['writes_per_job']} "
        f"writes; by verb {req['by_verb']}):\n\n{req_table}\n"
        f"Settings: {r['settings']}. The emulator and the simulator share this process and its event loop, "
        "so latencies include their own work (on a real API server they would be lower).\n\n"
        "## Machine\n\n" + benchlib.machine_markdown(result["machine"])
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=20.0, help="FineTuneJobs created per second")
    ap.add_argument("--run-s", type=float, default=2.0, help="seconds the simulated trainer runs")
    ap.add_argument("--hold-s", type=float, default=1.0, help="seconds a Succeeded job stays before deletion")
    ap.add_argument("--sync-interval", type=float, default=10.0, help="operator --sync-interval (its default)")
    ap.add_argument("--trainer-metrics-port", type=int, default=1, help="nobody listens: progress pulls fail fast")
    ap.add_argument("--tick", type=float, default=0.2, help="simulator tick (it lists every Job and Pod each tick)")
    ap.add_argument("--name", default="operator_scale", help="results file name under bench/results/")
    ap.add_argument("--timeout-s", type=float, default=600.0)
    ap.add_argument("--startup-timeout-s", type=float, default=120.0)
    ap.add_argument("--note", default="2 vCPUs shared with other engineers' processes during the run")
    ap.add_argument("--out", type=Path, default=benchlib.RESULTS_DIR)
    ap.add_argument(
        "--real",
        action="store_true",
        help="on the real control plane (etcd, kube-apiserver, KCM, scheduler, kwok; `make tools`)",
    )
    p = ap.parse_args(argv)
    if p.real:
        import json

        name = p.name if p.name != "operator_scale" else "operator_scale_real"
        result = {
            "benchmark": "operator_scale_real",
            "machine": benchlib.machine_info(extra_packages=["kopf", "kubernetes"], note=p.note),
            "result": asyncio.run(run_real(p)),
        }
        emulated_path = p.out / "operator_scale.json"
        emulated = json.loads(emulated_path.read_text()) if emulated_path.exists() else None
        js, md = benchlib.write_results(name, result, render_real(result, emulated), p.out)
        print(md.read_text())
        print(f"wrote {js} and {md}", file=sys.stderr)
        return 0
    result = {
        "benchmark": "operator_scale",
        "machine": benchlib.machine_info(extra_packages=["kopf", "kmock", "kubernetes"], note=p.note),
        "result": asyncio.run(run(p)),
    }
    js, md = benchlib.write_results(p.name, result, render(result), p.out)
    print(md.read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
