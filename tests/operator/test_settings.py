"""`kubetune operator` flags and their KUBETUNE_<FLAG> environment variables."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from kubetune.operator import settings


def parse(argv: list[str]) -> settings.OperatorSettings:
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    return settings.from_args(p.parse_args(argv))


def test_defaults_watch_everything() -> None:
    s = parse([])
    assert s.namespaces == [] and not s.standalone and s.metrics_port == 8080 and s.health_port == 8081
    assert s.gpu_resource == "nvidia.com/gpu" and s.default_output_uri is None


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBETUNE_NAMESPACE", "team-a,team-b")
    monkeypatch.setenv("KUBETUNE_STANDALONE", "true")
    monkeypatch.setenv("KUBETUNE_DEFAULT_OUTPUT_URI", "s3://b/p")
    monkeypatch.setenv("KUBETUNE_GPU_RESOURCE", "amd.com/gpu")
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "9000")
    s = parse([])
    assert s.namespaces == ["team-a", "team-b"] and s.standalone and s.default_output_uri == "s3://b/p"
    assert s.gpu_resource == "amd.com/gpu" and s.metrics_port == 9000
    assert s.build_options().gpu_resource == "amd.com/gpu"
    flags = parse(["-n", "x", "--namespace", "y", "--metrics-port", "1"])
    assert flags.namespaces == ["x", "y"] and flags.metrics_port == 1, "flags win over the environment"
    assert parse(["--all-namespaces"]).namespaces == []


def test_api_timeout_and_kueue_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.operator import kube

    assert parse([]).api_timeout == 30.0 and not parse([]).kueue_manages_all_jobs
    monkeypatch.setenv("KUBETUNE_API_TIMEOUT", "7.5")
    monkeypatch.setenv("KUBETUNE_KUEUE_MANAGES_ALL_JOBS", "true")
    s = parse([])
    assert s.api_timeout == 7.5 and s.kueue_manages_all_jobs and s.build_options().kueue_manages_all_jobs
    assert parse(["--api-timeout", "2"]).api_timeout == 2.0
    before = kube.TIMEOUT
    try:
        kube.set_timeout(2.0)
        assert kube.request_timeout() == (2.0, 2.0)
        kube.set_timeout(60)
        assert kube.request_timeout() == (kube.CONNECT_TIMEOUT, 60.0)
    finally:
        kube.set_timeout(before)


def test_kopf_watches_children_with_server_side_selectors() -> None:
    import kopf
    from kopf._cogs.structs.references import Resource

    from kubetune.operator import config

    s = kopf.OperatorSettings()
    config.configure(s, settings.OperatorSettings(api_timeout=12))
    selectors = s.watching.label_selectors
    assert selectors.collect(Resource("batch", "v1", "jobs")) == ["kubetune.io/finetunejob"]
    assert selectors.collect(Resource("", "v1", "pods")) == [
        "kubetune.io/finetunejob,app.kubernetes.io/component=trainer"
    ]
    assert selectors.collect(Resource("kubetune.io", "v1alpha1", "finetunejobs")) == []
    assert s.networking.request_timeout == 12 and s.networking.connect_timeout == 5


@pytest.mark.parametrize("flag", ["--metrics-port", "--health-port"])
def test_a_taken_port_is_one_line_and_exit_1(flag: str) -> None:
    """Not a startup kopf retries forever, nor a traceback from its liveness task: checked before kopf starts (the
    operator's own process, as the Deployment runs it)."""
    import os
    import socket
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "operator"), str(root / "trainer")])}
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = "--health-port" if flag == "--metrics-port" else "--metrics-port"
        proc = subprocess.run(
            [sys.executable, "-m", "kubetune.operator", flag, str(port), other, "0"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and f"{flag} {port}: cannot listen" in err[0] and "free port" in err[0], err
