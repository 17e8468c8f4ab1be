"""The alert rules: promtool checks them and unit-tests every alert (tests/observability/alerts_test.yaml)."""

from __future__ import annotations

import subprocess

import yaml

from kubetune.api import metrics as names
from tests.observability.tools import ALERT_TESTS, ALERTS, alerts, promtool


def test_rules_are_valid():
    proc = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 8 rules found" in proc.stdout


def test_every_alert_is_unit_tested_and_passes():
    rules = [r["alert"] for g in alerts()["groups"] for r in g["rules"] if "alert" in r]
    tested = {
        t["alertname"]
        for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert set(rules) <= tested, f"alerts without a promtool test: {sorted(set(rules) - tested)}"
    # the five: loss NaN/Inf, no step progress, throughput drop, ETA past the deadline, job failed
    for required in (
        "KubetuneLossNotFinite",
        "KubetuneNoStepProgress",
        "KubetuneThroughputDrop",
        "KubetuneEtaBeyondDeadline",
        "KubetuneTrainerFailed",
        "KubetuneFineTuneJobFailed",
    ):
        assert required in rules
    proc = subprocess.run(
        [promtool(), "test", "rules", ALERT_TESTS.name],
        capture_output=True,
        text=True,
        check=False,
        cwd=ALERT_TESTS.parent,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_wrong_expectation_fails(tmp_path):
    """The unit tests can fail: the same file with one expected label changed is rejected."""
    text = ALERT_TESTS.read_text().replace("job: diverged,", "job: someone-else,")
    assert text != ALERT_TESTS.read_text()
    copy = tmp_path / "alerts_test.yaml"
    copy.write_text(text.replace("../../charts/kubetune/files/alerts.yaml", str(ALERTS)))
    proc = subprocess.run(
        [promtool(), "test", "rules", str(copy)], capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 1 and "KubetuneLossNotFinite" in proc.stdout + proc.stderr


def test_rules_use_the_shared_metric_names():
    import re

    known = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.startswith("kubetune_")}
    used = set()
    for group in alerts()["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"kubetune_[a-z_]+", rule["expr"]))
    assert used and used <= known, sorted(used - known)
