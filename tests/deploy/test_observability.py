"""A real Prometheus (Debian's package) scraping the real service on loopback: what the
dashboard and the alerts read is really there, with the right numbers."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import LATENCY_BUCKETS
from service.settings import Settings
from tests.deploy import promql, tools
from tests.deploy.prom import Prometheus, running_prometheus, wait_until
from tests.service.server import free_port

D = 16
MODEL = Settings.model_fields["default_model"].default  # what POST /pool serves
# Panels that may rightly show nothing while the service is healthy.
MAY_BE_EMPTY = {"Firing alerts"}


@pytest.fixture(scope="module")
def prometheus(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Our prometheus.yml and alerts.yml, scraping and evaluating every second, with the
    replica found by DNS replaced by the one test server."""
    port = free_port()
    config = yaml.safe_load((tools.DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(tools.DEPLOY / "prometheus" / f) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        target = urlparse(server).netloc if job["job_name"] == "adapool" else f"127.0.0.1:{port}"
        job["static_configs"] = [{"targets": [target]}]
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus"), port) as running:
        yield running


@dataclass
class Traffic:
    """What the test sent and what the service answered."""

    ok: dict[str, int] = field(default_factory=dict)  # model -> 200 responses
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # model -> diagnostics
    pool_latencies: list[float] = field(default_factory=list)  # every POST /pool, seconds
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (route, status) -> n

    def record(self, route: str, response: httpx.Response) -> None:
        key = (route, str(response.status_code))
        self.counts[key] = self.counts.get(key, 0) + 1
        if response.status_code == 200:
            body = response.json()
            self.ok[body["model"]] = self.ok.get(body["model"], 0) + 1
            self.items.setdefault(body["model"], []).extend(body["diagnostics"])


def embeddings(rng: np.random.Generator, lengths: list[int]) -> list[Any]:
    return [rng.standard_normal((n, D)).round(4).tolist() for n in lengths]


@pytest.fixture(scope="module")
def traffic(server: str, prometheus: Prometheus) -> Traffic:
    """One request, scraped; then the rest (so rate() has a sample before them), scraped."""
    rng = np.random.default_rng(0)
    sent = Traffic()
    with httpx.Client(base_url=server, timeout=30) as client:
        started = time.perf_counter()
        first = client.post("/pool", json={"embeddings": embeddings(rng, [8])})
        sent.pool_latencies.append(time.perf_counter() - started)
        sent.record("/pool", first)
        wait_until(lambda: bool(prometheus.query('adapool_requests_total{route="/pool"}')))
        time.sleep(1.5)
        for i in range(12):
            lengths = [[1, 5, 17, 64, 128][(i + j) % 5] for j in range(1 + i % 3)]
            started = time.perf_counter()
            response = client.post("/pool", json={"embeddings": embeddings(rng, lengths)})
            sent.pool_latencies.append(time.perf_counter() - started)
            sent.record("/pool", response)
        for lengths in ([3, 30], [64]):
            body = {"embeddings": embeddings(rng, lengths)}
            sent.record("/models/{name}/pool", client.post("/models/knn-avg/pool", json=body))
        started = time.perf_counter()
        wrong_dim = client.post("/pool", json={"embeddings": [[[0.5] * (D + 1)] * 4]})
        sent.pool_latencies.append(time.perf_counter() - started)
        sent.record("/pool", wrong_dim)
        sent.record("/models/{name}/pool", client.post("/models/nope/pool", json={}))
    assert sent.counts == {
        ("/pool", "200"): 13,
        ("/pool", "422"): 1,
        ("/models/{name}/pool", "200"): 2,
        ("/models/{name}/pool", "404"): 1,
    }
    total = sum(sent.counts.values())
    wait_until(
        lambda: (
            prometheus.query('sum(adapool_requests_total{route=~".*/pool"})')[0]["value"][1]
            == str(total)
        )
    )
    time.sleep(2.5)  # a few more scrapes and rule evaluations after the last request
    return sent


def test_request_counters(prometheus: Prometheus, traffic: Traffic) -> None:
    result = prometheus.query(
        'sum by (route, status) (adapool_requests_total{job="adapool", route=~".*/pool"})'
    )
    got = {(r["metric"]["route"], r["metric"]["status"]): float(r["value"][1]) for r in result}
    assert got == {k: float(v) for k, v in traffic.counts.items()}
    invalid = f'adapool_rejected_requests_total{{model="{MODEL}", reason="invalid"}}'
    assert prometheus.value(invalid) == 1


def test_latency_quantiles(prometheus: Prometheus, traffic: Traffic) -> None:
    """Over every POST /pool (the cumulative buckets): 0 < p50 <= p99 <= the bucket bound above
    the slowest request the client saw (the server's duration is the shorter). The dashboard's
    form (over rate()) gives finite, ordered quantiles; it is not held to the bound, because
    rate() extrapolates each bucket by its own factor when a series is seconds old."""
    bucket = 'adapool_request_duration_seconds_bucket{job="adapool", route="/pool"}'
    p50, p99 = (
        prometheus.value(f"histogram_quantile({q}, sum by (le) ({bucket}))") for q in (0.5, 0.99)
    )
    bound = min((b for b in LATENCY_BUCKETS if b >= max(traffic.pool_latencies)), default=math.inf)
    assert 0 < p50 <= p99 <= bound
    p50, p99 = (
        prometheus.value(f"histogram_quantile({q}, sum by (le) (rate({bucket}[1m])))")
        for q in (0.5, 0.99)
    )
    assert 0 < p50 <= p99 <= LATENCY_BUCKETS[-1]


def test_diagnostics_histograms(prometheus: Prometheus, traffic: Traffic) -> None:
    """Counts, sums and one bucket of each diagnostics histogram equal the responses' numbers."""
    for model, items in traffic.items.items():
        where = f'{{job="adapool", model="{model}"}}'
        snr = [item["estimated_snr"] for item in items]
        assert prometheus.value(f"adapool_diagnostic_estimated_snr_count{where}") == len(snr)
        assert prometheus.value(f"adapool_diagnostic_estimated_snr_sum{where}") == pytest.approx(
            sum(snr), rel=1e-9
        )
        below = f'adapool_diagnostic_estimated_snr_bucket{{model="{model}", le="0.25"}}'
        assert prometheus.value(below) == sum(s <= 0.25 for s in snr)
        entropy = [i["normalized_entropy"] for i in items if i["normalized_entropy"] is not None]
        if model == MODEL:
            assert len(entropy) < len(items)  # 1-token items have none
        metric = "adapool_diagnostic_normalized_entropy"
        assert prometheus.value(f"{metric}_count{where}") == len(entropy)
        assert prometheus.value(f"{metric}_sum{where}") == pytest.approx(sum(entropy), rel=1e-9)
        effective = [item["effective_tokens"] for item in items]
        assert prometheus.value(f"adapool_diagnostic_effective_tokens_sum{where}") == pytest.approx(
            sum(effective), rel=1e-9
        )


def test_stages_batches_and_models(prometheus: Prometheus, traffic: Traffic) -> None:
    result = prometheus.query(
        f'sum by (stage) (adapool_stage_duration_seconds_count{{model="{MODEL}"}})'
    )
    stages = {r["metric"]["stage"]: float(r["value"][1]) for r in result}
    ok = traffic.ok[MODEL]
    assert {k: v for k, v in stages.items() if k != "inference"} == {
        "decode": ok,
        "queue": ok,
        "diagnostics": ok,
        "encode": ok,
    }
    runs = stages["inference"]
    assert 1 <= runs <= ok
    assert prometheus.value(f'adapool_batch_size_count{{model="{MODEL}"}}') == runs
    items = prometheus.value(f'adapool_batch_size_sum{{model="{MODEL}"}}')
    assert items == len(traffic.items[MODEL])
    info = prometheus.query("adapool_model_info")
    assert {r["metric"]["provider"] for r in info} == {"CPUExecutionProvider"}
    assert len(info) == len(list((tools.ROOT / "model_repository").glob("*/*/model.onnx")))
    assert prometheus.value("min(adapool_model_ready)") == 1
    assert prometheus.value('up{job="adapool"}') == 1


def test_alert_rules_evaluate_on_live_data(prometheus: Prometheus, traffic: Traffic) -> None:
    """Every rule loaded and evaluated without error (no many-to-many joins, no bad types)
    against the real series, and none fires for a healthy service."""
    groups = prometheus.api("rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == {rule["alert"] for rule in promql.alert_rules()}
    for name, rule in rules.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert not rule["lastEvaluation"].startswith("0001"), name
        assert rule["state"] != "firing", (name, rule["alerts"])


def test_every_dashboard_query_runs_and_shows_data(
    prometheus: Prometheus, traffic: Traffic
) -> None:
    now = time.time()
    for title, target in promql.dashboard_targets():
        expr = promql.grafana_to_promql(target["expr"])
        if target.get("instant"):
            result = prometheus.api("query", query=expr)["result"]
        else:
            result = prometheus.api("query_range", query=expr, start=now - 30, end=now, step=1)[
                "result"
            ]
        if title not in MAY_BE_EMPTY:
            assert result, f"panel {title!r} {target['refId']}: no data for {expr}"
    for variable in promql.dashboard()["templating"]["list"]:
        query = variable["query"]["query"]  # label_values(metric, label)
        metric, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        values = prometheus.api("series", **{"match[]": metric})
        assert {s[label] for s in values}, query


def test_every_metric_named_exists_in_the_service(server: str, traffic: Traffic) -> None:
    """Each adapool_* name in the alert rules and the dashboard is one /metrics exposes (with
    histogram and counter suffixes), and each label a selector filters on is one it has."""
    text = httpx.get(f"{server}/metrics", timeout=10).text
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
        }.get(family.type, [""])
        for suffix in suffixes:
            labels[family.name + suffix] = {"job", "instance"}
        for sample in family.samples:
            labels.setdefault(sample.name, {"job", "instance"}).update(sample.labels)
    assert len([n for n in labels if n.startswith("adapool_")]) > 20
    named = 0
    for where, expr in promql.every_expression().items():
        for name in promql.METRIC.findall(expr):
            assert name in labels, f"{where}: {name} is not on /metrics"
            named += 1
        for name, selector in promql.SELECTOR.findall(expr):
            for label in promql.LABEL.findall(selector):
                assert label in labels[name], f"{where}: {name} has no label {label!r}"
    assert named > 40
