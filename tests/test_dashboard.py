"""The Grafana dashboard queries only metrics the gateway exports, and covers what operators watch."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

from service import metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "helm" / "grafana" / "audiochat-dashboard.json"


def exported_names() -> set[str]:
    """Every sample name the core's and the edge's registries can produce (labelled families may have no
    samples yet)."""
    metrics.for_transport("grpc")
    families = [*REGISTRY.collect(), *metrics.EDGE_REGISTRY.collect()]
    by_type = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
    return {family.name + suffix for family in families for suffix in by_type.get(family.type, ("",))}


def test_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported_names()
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries.append(dashboard["templating"]["list"][1]["query"])
    used = {name for query in queries for name in re.findall(r"audiochat_[a-z_]+", query)}
    assert used, "the dashboard queries nothing"
    missing = used - names
    assert not missing, f"queries name metrics the gateway does not export: {sorted(missing)}"


def test_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for needed in (
        "time to first audio",
        "added latency",
        "active streams",
        "outcome",
        "tokens",
        "error rate",
    ):
        assert needed in titles
    first_audio = next(p for p in dashboard["panels"] if p["title"].startswith("Time to first audio"))
    quantiles = {re.findall(r"histogram_quantile\(([0-9.]+)", t["expr"])[0] for t in first_audio["targets"]}
    assert quantiles == {"0.5", "0.95", "0.99"}
    # Comparable per upstream API (Chat Completions, Realtime): the label is kept apart in every quantile.
    assert all("upstream" in re.findall(r"by \(([^)]*)\)", t["expr"])[0] for t in first_audio["targets"])
    assert "upstream" in metrics.TIME_TO_FIRST_AUDIO._labelnames
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
