"""The autoscalers' metric, read from a real Prometheus scraping the real service: the HPA's
(prometheus-adapter's metricsQuery, expanded as the adapter expands it) and KEDA's (the
InferenceService's query). No cluster runs here: the labels that the Prometheus Operator gives
each pod's series (job = the Service's name, namespace, service, pod, container, endpoint) are
set on static targets, and one server is scraped as two pods."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from tests.deploy import kube
from tests.deploy.prom import Prometheus, running_prometheus, wait_until
from tests.service.server import running_server

D = 16
QUEUED = 6  # requests held in the queue at once
WAIT_MS = 6000  # how long the batcher holds them (it waits for a batch of 64 to fill)
JOBS = {"base": "adapool", "kserve": "adapool-predictor"}  # the Services' names
PODS = 2


def pod_names(target: str) -> list[str]:
    return [f"{JOBS[target]}-{i}" for i in range(PODS)]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with running_server("--max-wait-ms", str(WAIT_MS)) as url:
        yield url


@pytest.fixture(scope="module")
def prometheus(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    jobs = []
    for target, job in JOBS.items():
        (endpoint,) = kube.one(kube.render(target), "ServiceMonitor")["spec"]["endpoints"]
        labels = {
            "namespace": kube.workload(target)["metadata"]["namespace"],
            "service": job,
            "endpoint": endpoint["port"],
            "container": kube.container(target)["name"],
        }
        static = [
            {"targets": [urlparse(server).netloc], "labels": {**labels, "pod": name}}
            for name in pod_names(target)
        ]
        jobs.append({"job_name": job, "metrics_path": endpoint["path"], "static_configs": static})
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": jobs,
    }
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus")) as running:
        wait_until(lambda: len(running.query("up == 1")) == PODS * len(JOBS))
        yield running


def adapter_rule() -> dict[str, Any]:
    rules = yaml.safe_load((kube.KUBERNETES / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = rules["rules"]
    assert isinstance(rule, dict)
    return rule


def adapter_query(namespace: str, pods: list[str]) -> str:
    """metricsQuery as prometheus-adapter fills it for the HPA's request of the pods' metric:
    the series, the label matchers of the namespace and pods, grouped by pod."""
    rule = adapter_rule()
    series = rule["name"]["as"]
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )


def keda_query() -> str:
    (metric,) = kube.pod_spec(kube.workload("kserve"))["autoScaling"]["metrics"]
    query: str = metric["external"]["metric"]["query"]
    return query


def per_pod(prometheus: Prometheus, expr: str) -> dict[str, float]:
    return {r["metric"]["pod"]: float(r["value"][1]) for r in prometheus.query(expr)}


def hold_requests_in_the_queue(server: str) -> list[httpx.Response]:
    body = {"embeddings": [[[0.5] * D] * 4]}
    with ThreadPoolExecutor(QUEUED) as pool:
        futures = [
            pool.submit(httpx.post, f"{server}/pool", json=body, timeout=WAIT_MS / 1000 + 30)
            for _ in range(QUEUED)
        ]
        return [f.result() for f in futures]


def test_the_hpa_and_keda_read_the_queue_gauge(server: str, prometheus: Prometheus) -> None:
    namespace = kube.workload("base")["metadata"]["namespace"]
    rule = adapter_rule()
    found = prometheus.api("series", **{"match[]": rule["seriesQuery"]})
    assert {(s["job"], s["pod"]) for s in found} == {
        (job, pod) for target, job in JOBS.items() for pod in pod_names(target)
    }
    hpa_query = adapter_query(namespace, pod_names("base"))
    idle = per_pod(prometheus, hpa_query)
    assert idle == dict.fromkeys(pod_names("base"), 0.0)
    assert prometheus.value(keda_query()) == 0.0

    seen: dict[str, Any] = {}
    with ThreadPoolExecutor(1) as sender:
        answers = sender.submit(hold_requests_in_the_queue, server)

        def queued() -> bool:
            seen["hpa"] = per_pod(prometheus, hpa_query)
            seen["keda"] = prometheus.value(keda_query())
            full = dict.fromkeys(pod_names("base"), float(QUEUED))
            return seen["keda"] == QUEUED * PODS and seen["hpa"] == full

        wait_until(queued, timeout=WAIT_MS / 1000 - 1)
        assert all(r.status_code == 200 for r in answers.result())
    # What the HPA and KEDA do with it: desired = ceil(replicas x average / target) for the
    # HPA, ceil(query / threshold) for KEDA's AverageValue.
    hpa = kube.one(kube.render("base"), "HorizontalPodAutoscaler")["spec"]
    target = float(hpa["metrics"][0]["pods"]["target"]["averageValue"])
    average = sum(seen["hpa"].values()) / PODS
    print(
        f"HPA: {seen['hpa']} (average {average}, target {target}: "
        f"{math.ceil(PODS * average / target)} replicas); KEDA: {seen['keda']} "
        f"({math.ceil(seen['keda'] / target)} replicas)"
    )
    # A gauge: back to 0 once the batch has run (a counter would stay up).
    # (Every target scraped since: each job's two targets are scraped at their own moments.)
    wait_until(
        lambda: prometheus.value(keda_query()) == 0.0 and per_pod(prometheus, hpa_query) == idle,
        timeout=10,
    )


def test_queries_select_only_their_own_pods(prometheus: Prometheus) -> None:
    """KEDA's sum covers the predictor's pods, not the base Deployment's in the same namespace;
    the adapter's query covers the pods the HPA asks for."""
    keda = keda_query()
    assert "sum(" in keda
    by_job = keda.replace("sum(", "sum by (job, pod) (", 1)
    assert {(r["metric"]["job"], r["metric"]["pod"]) for r in prometheus.query(by_job)} == {
        ("adapool-predictor", pod) for pod in pod_names("kserve")
    }
    one_pod = adapter_query("adapool", pod_names("base")[:1])
    assert set(per_pod(prometheus, one_pod)) == set(pod_names("base")[:1])
    assert per_pod(prometheus, adapter_query("elsewhere", pod_names("base"))) == {}
