"""Training progress pulled from the rank-0 pod's Prometheus endpoint into ``status.progress``.

The operator scrapes ``http://<rank-0 pod IP>:<metrics port>/metrics`` on its resync (every sync
interval), so training pods need no API token or RBAC. Parsing is pure; :func:`scrape` does one GET.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.metrics import (
    CHECKPOINT_LAST_STEP,
    DATASET_ROWS,
    MEMORY_ESTIMATE_BYTES,
    PROGRESS_FIELDS,
    format_duration,
)

INT_FIELDS = {"step", "totalSteps"}


def parse(text: str) -> dict[str, float]:
    """Metric name → value of the first sample of every trainer gauge named in PROGRESS_FIELDS."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in PROGRESS_FIELDS and sample.name not in values and math.isfinite(sample.value):
                values[sample.name] = sample.value
    return values


def progress(values: dict[str, float]) -> dict[str, Any]:
    """``status.progress`` (camelCase) from scraped values; percent and eta derived."""
    out: dict[str, Any] = {}
    for metric, field in PROGRESS_FIELDS.items():
        if metric in values:
            v = values[metric]
            out[field] = int(v) if field in INT_FIELDS else round(v, 6)
    if out.get("totalSteps"):
        out["percent"] = round(100.0 * out.get("step", 0) / out["totalSteps"], 1)
    if "etaSeconds" in out:
        out["etaSeconds"] = round(out["etaSeconds"], 1)
        out["eta"] = format_duration(out["etaSeconds"])
    return out


def rank0_url(pods: list[dict[str, Any]], port: int) -> str | None:
    """Metrics URL of the running rank-0 pod, if it has an IP yet."""
    for pod in pods:
        index = (pod.get("metadata", {}).get("annotations") or {}).get("batch.kubernetes.io/job-completion-index")
        st = pod.get("status") or {}
        if index == "0" and st.get("phase") == "Running" and st.get("podIP"):
            host = st["podIP"]
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{port}/metrics"
    return None


def facts(text: str, output_uri: str | None = None) -> dict[str, Any]:
    """Status fields besides progress: ``datasets`` (rows read/valid/dropped per dataset), ``memoryEstimateGib``
    (from the model's real config), ``lastCheckpoint`` (``<output>/checkpoints/step-N``)."""
    out: dict[str, Any] = {}
    datasets: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            if sample.name == MEMORY_ESTIMATE_BYTES:
                out["memoryEstimateGib"] = round(sample.value / 2**30, 2)
            elif sample.name == DATASET_ROWS and {"dataset", "state"} <= set(sample.labels):
                field = {"read": "rows", "valid": "valid", "dropped": "dropped"}.get(sample.labels["state"])
                if field:
                    datasets.setdefault(sample.labels["dataset"], {"name": sample.labels["dataset"]})[field] = int(sample.value)
            elif sample.name == CHECKPOINT_LAST_STEP and sample.value > 0 and output_uri:
                out["lastCheckpoint"] = f"{output_uri.rstrip('/')}/checkpoints/step-{int(sample.value)}"
    if datasets:
        out["datasets"] = [datasets[name] for name in sorted(datasets)]
    return out


async def scrape(url: str, timeout: float = 3.0, output_uri: str | None = None) -> dict[str, Any]:
    """GET the metrics page: ``{"progress": {...}, **facts}`` for the status; raises on network errors."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, session.get(url) as resp:
        resp.raise_for_status()
        text = await resp.text()
    return {"progress": progress(parse(text)), **facts(text, output_uri)}
