"""The Grafana dashboard and the chart's monitoring templates, checked offline.

The dashboard is type-checked against Grafana's own TypeScript schema (@grafana/schema + tsc);
its queries are run for real in test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
import yaml

from kubetune.api import metrics as names
from tests.chart.helm import find, one, template
from tests.observability.tools import ALERTS, NPM_DIR, dashboard, panel_queries, panels, tsc

METRIC_NAMES = {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.startswith("kubetune_")}


def typecheck(board: dict) -> subprocess.CompletedProcess[str]:
    """`tsc --strict` on `const d: Dashboard = <json>`; the file lives under .tools/npm to resolve the package."""
    compiler = tsc()
    folder = NPM_DIR / f"check-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        (folder / "check.ts").write_text(
            "import type { Dashboard } from '@grafana/schema';\n"
            f"export const dashboard: Dashboard = {json.dumps(board, indent=2)};\n",
            encoding="utf-8",
        )
        return subprocess.run(
            [
                compiler,
                "--noEmit",
                "--strict",
                "--skipLibCheck",
                "--moduleResolution",
                "bundler",
                "--module",
                "esnext",
                "--target",
                "es2022",
                str(folder / "check.ts"),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            cwd=NPM_DIR,
        )
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_dashboard_type_checks_with_grafana_schema():
    proc = typecheck(dashboard())
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "breakage, error",
    [
        (lambda b: b.update(graphTooltip=7), "DashboardCursorSync"),
        (lambda b: b["panels"][1]["gridPos"].update(w="12"), "'string' is not assignable to type 'number'"),
        (lambda b: b["panels"][1].update(titel="typo"), "titel"),
    ],
)
def test_type_check_rejects_a_broken_dashboard(breakage, error):
    board = dashboard()
    breakage(board)
    proc = typecheck(board)
    assert proc.returncode != 0 and error in proc.stdout, proc.stdout


def test_dashboard_layout_and_variables():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= set(variables)
    assert "label_values(kubetune_trainer_phase, namespace)" in json.dumps(variables["namespace"]["query"])
    assert variables["job"]["multi"] and variables["job"]["includeAll"]
    ids = [p["id"] for p in board["panels"]] + [p["id"] for p in panels(board)]
    assert len(set(ids)) == len(set(map(id, board["panels"] + panels(board)))), "panel ids must be unique"
    titles = {p["title"] for p in panels(board)}
    # what the issue asks the dashboard to show
    for title in (
        "FineTuneJobs by phase",
        "Loss",
        "Learning rate",
        "Tokens / s",
        "ETA",
        "Progress",
        "GPU memory",
        "MFU",
        "Restarts",
    ):
        assert title in titles
    for panel in panels(board):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def test_queries_use_the_shared_metric_names_and_cover_the_trainer_metrics():
    used: set[str] = set()
    for title, ref, target in panel_queries(dashboard()):
        found = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"kubetune_[a-z_]+", target["expr"])}
        assert found, f"{title}/{ref} queries no kubetune metric"
        used |= found
        if "namespace" not in target["expr"] and not any(m.startswith("kubetune_operator") for m in found):
            pytest.fail(f"{title}/{ref} ignores the namespace/job variables: {target['expr']}")
    assert used <= METRIC_NAMES, sorted(used - METRIC_NAMES)
    trainer = {n for n in METRIC_NAMES if not n.startswith("kubetune_operator")}
    assert trainer <= used, f"trainer metrics not on the dashboard: {sorted(trainer - used)}"
    operator = {
        names.OPERATOR_JOBS,
        names.OPERATOR_RECONCILE_SECONDS,
        names.OPERATOR_API_ERRORS,
        names.OPERATOR_PROGRESS_POLL_FAILURES,
    }
    assert operator <= used


# ------------------------------------------------------------------------------------------ chart templates

MONITORING_ON = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True, "labels": {"grafana_dashboard": "1"}, "annotations": {"grafana_folder": "ML"}},
    }
}


def test_chart_ships_dashboard_rules_and_monitors():
    objs = template(MONITORING_ON)
    cm = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert len(cm) == 1
    assert cm[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm[0]["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert json.loads(cm[0]["data"]["kubetune.json"]) == dashboard()

    rule = one(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())

    pod_monitor = one(objs, "PodMonitor")
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["honorLabels"] is True and endpoint["port"] == "metrics"
    assert pod_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "trainer"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}

    service_monitor = one(objs, "ServiceMonitor")
    assert service_monitor["metadata"]["labels"]["release"] == "prom"
    service = next(o for o in find(objs, "Service") if o["metadata"]["name"].endswith("-metrics"))
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_pod_monitor_follows_watched_namespaces():
    values = {**MONITORING_ON, "watch": {"allNamespaces": False, "namespaces": ["team-a", "team-b"]}}
    pod_monitor = one(template(values), "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def test_monitors_and_rules_are_opt_in():
    objs = template({})
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        assert not find(objs, kind)
    assert not [
        o
        for o in template({"monitoring": {"dashboard": {"enabled": False}}})
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]


def test_service_monitor_needs_the_metrics_service():
    from tests.chart.helm import RELEASE, helm, set_args

    proc = helm(
        "template",
        RELEASE,
        "charts/kubetune",
        *set_args({"monitoring": {"serviceMonitor": {"enabled": True}}, "metrics": {"service": {"enabled": False}}}),
    )
    assert proc.returncode != 0 and "needs metrics.service.enabled" in proc.stderr


def test_every_panel_query_parses(tmp_path):
    """promtool parses each query (as a recording rule) after Grafana's variables are substituted."""
    from tests.observability.tools import promtool, substitute

    rules = [
        {
            "record": f"panel:query:{i}",
            "expr": substitute(t["expr"], namespace="ml", job="demo", rate_interval="1m", range_="1h"),
        }
        for i, (_title, _ref, t) in enumerate(panel_queries(dashboard()))
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
