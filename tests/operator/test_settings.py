"""`kubetune operator` flags and their KUBETUNE_<FLAG> environment variables."""

from __future__ import annotations

import argparse

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
