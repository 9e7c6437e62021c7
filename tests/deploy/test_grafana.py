"""The provisioned Grafana dashboard, checked statically (Grafana itself does not install here;
test_observability.py runs every panel's query through a real Prometheus)."""

from __future__ import annotations

import re
from itertools import combinations

import yaml

from tests.deploy import promql, tools

PROVISIONING = tools.DEPLOY / "grafana" / "provisioning"
CORE_PANELS = {"row", "timeseries", "stat", "table", "heatmap"}


def datasource_uid() -> str:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    uid: str = source["uid"]
    return uid


def test_dashboard_identity() -> None:
    dashboard = promql.dashboard()
    assert dashboard["uid"] == "adapool-serve" and dashboard["title"] == "AdaPool Serve"
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns it


def test_panels_use_the_provisioned_datasource() -> None:
    uid = datasource_uid()
    panels = promql.dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["type"] in CORE_PANELS, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()
    for variable in promql.dashboard()["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_panels_fit_the_grid_without_overlapping() -> None:
    boxes = [(p["title"], p["gridPos"]) for p in promql.dashboard()["panels"]]
    for title, box in boxes:
        assert box["x"] >= 0 and box["w"] > 0 and box["x"] + box["w"] <= 24, title
    for (a, p), (b, q) in combinations(boxes, 2):
        apart = (
            p["x"] + p["w"] <= q["x"]
            or q["x"] + q["w"] <= p["x"]
            or p["y"] + p["h"] <= q["y"]
            or q["y"] + q["h"] <= p["y"]
        )
        assert apart, f"{a!r} overlaps {b!r}"


def test_every_variable_used_is_defined() -> None:
    dashboard = promql.dashboard()
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    for title, target in promql.dashboard_targets():
        for name in re.findall(r"\$(\w+)", target["expr"]):
            assert name in defined or name.startswith("__"), (title, name)
        promql.grafana_to_promql(target["expr"])  # every variable has a test substitute


def test_dashboard_shows_what_operators_need() -> None:
    """Request rate and errors by status, latency p50/p95/p99, stage durations, batch size and
    padding, queue depth, provider in use, and the diagnostics' distributions."""
    exprs = " ".join(t["expr"] for _, t in promql.dashboard_targets())
    for needed in (
        "sum by (status) (rate(adapool_requests_total",
        'status=~"5.."',
        "histogram_quantile(0.5, sum by (le) (rate(adapool_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(adapool_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(adapool_request_duration_seconds_bucket",
        "sum by (stage, le) (rate(adapool_stage_duration_seconds_bucket",
        "adapool_batch_size_bucket",
        "adapool_batch_padding_ratio_sum",
        "adapool_queue_depth",
        "max by (instance, model, version, provider) (adapool_model_info",
        "adapool_diagnostic_estimated_snr_bucket",
        "adapool_diagnostic_normalized_entropy_bucket",
        "adapool_diagnostic_effective_tokens_bucket",
    ):
        assert needed in exprs, needed
    heatmaps = [p for p in promql.dashboard()["panels"] if p["type"] == "heatmap"]
    assert len(heatmaps) == 3
    for panel in heatmaps:
        assert all(t["format"] == "heatmap" for t in panel["targets"])


def test_provider_loads_the_dashboard_folder() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "adapool.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/etc/grafana/dashboards"
