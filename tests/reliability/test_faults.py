"""Faults on the real server: broken models at start-up, a model run that fails, clients that
leave while their request waits for its batch."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from bench import process
from tests.reliability.common import (
    REPOSITORY,
    assert_error,
    missing,
    rss_bytes,
    sample,
    scrape,
    serves,
)

D = 16
POISON = 5000.0  # any real token value above 1000 makes the faulty model's run fail

pytestmark = pytest.mark.slow


def faulty_model(path: Path) -> None:
    """knn-avg's signature and answer (mean of the real tokens, weight 1/n each), but the run
    fails in ONNX Runtime (Gather out of range) when any value in the batch exceeds 1000."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        missing("onnx", "the train extra: make setup")
    i64 = TensorProto.INT64
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]),
        helper.make_node("Mul", ["embeddings", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["m", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["total", "count"], ["mean"]),
        helper.make_node("Div", ["m", "count"], ["w2"]),
        helper.make_node("Unsqueeze", ["w2", "axis1"], ["weights"]),
        # the fault: index 5 into a 2-element table when max(embeddings) > 1000
        helper.make_node("ReduceMax", ["embeddings"], ["top"], keepdims=0),
        helper.make_node("Greater", ["top", "limit"], ["poisoned"]),
        helper.make_node("Cast", ["poisoned"], ["flag"], to=i64),
        helper.make_node("Mul", ["flag", "five"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["zero"]),
        helper.make_node("Add", ["mean", "zero"], ["pooled"]),
    ]
    constants = [
        helper.make_tensor("axis1", i64, [1], [1]),
        helper.make_tensor("axis2", i64, [1], [2]),
        helper.make_tensor("limit", TensorProto.FLOAT, [], [1000.0]),
        helper.make_tensor("five", i64, [], [5]),
        helper.make_tensor("table", TensorProto.FLOAT, [2], [0.0, 0.0]),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [
            helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", "tokens", D]),
            helper.make_tensor_value_info("attention_mask", TensorProto.BOOL, ["batch", "tokens"]),
        ],
        [
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", D]),
            helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["batch", 1, "tokens"]),
        ],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))


def copy_model(name: str, repo: Path) -> Path:
    target = repo / name / "1"
    target.mkdir(parents=True)
    for f in ("model.onnx", "manifest.json"):
        shutil.copy(REPOSITORY / name / "1" / f, target / f)
    return target


def test_a_failing_model_run_fails_only_its_batch(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_model("knn-avg", repo)
    faulty_model(repo / "faulty" / "1" / "model.onnx")
    manifest = json.loads((REPOSITORY / "knn-avg" / "1" / "manifest.json").read_text())
    (repo / "faulty" / "1" / "manifest.json").write_text(json.dumps({**manifest, "name": "faulty"}))
    rng = np.random.default_rng(0)
    good = [rng.standard_normal((n, D)).astype(np.float32) for n in (3, 7, 2)]
    poison = rng.standard_normal((4, D)).astype(np.float32)
    poison[2, 5] = POISON
    flags = ["--default-model", "knn-avg", "--max-wait-ms", "300"]
    with process.running_server(repo, flags, log_level="info") as (url, server):

        async def one_batch() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            "/models/faulty/pool",
                            json={"embeddings": [x.tolist()]},
                            headers={"X-Request-Id": f"fault-{i}"},
                        )
                        for i, x in enumerate([*good, poison])
                    )
                )

        failed = asyncio.run(one_batch())
        after = [
            httpx.post(f"{url}/models/faulty/pool", json={"embeddings": [x.tolist()]}) for x in good
        ]
        ready = httpx.get(f"{url}/health/ready")
        serves(url, "knn-avg")
        metrics = scrape(url)
    log = server.stdout.read().decode() if server.stdout else ""
    for i, r in enumerate(failed):  # the whole batch failed, each with its own request id
        body = assert_error(r, 500, "inference_failed")
        assert body["request_id"] == f"fault-{i}"
        assert "the model run failed" in body["error"]["message"]
        assert f"request fault-{i} failed: inference_failed" in log
    for x, r in zip(good, after, strict=True):  # the next batches succeed, exactly
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["pooled"][0], x.mean(0), atol=1e-5)
        np.testing.assert_allclose(r.json()["weights"][0], np.full(len(x), 1 / len(x)), atol=1e-6)
    assert ready.status_code == 200  # a failed run is not a broken model
    route = "/models/{name}/pool"
    assert sample(metrics, "adapool_requests_total", model="faulty", route=route, status="500") == 4
    assert sample(metrics, "adapool_requests_total", model="faulty", route=route, status="200") == 3


def test_broken_models_at_start_up_are_reported_and_the_others_serve(tmp_path: Path) -> None:
    """model.onnx missing, model.onnx corrupt, manifest.json corrupt: each version is listed
    as not ready with its reason (readiness, /models, adapool_model_ready), answers 503, and
    the healthy model serves."""
    repo = tmp_path / "repo"
    copy_model("knn-avg", repo)
    (copy_model("knn-max", repo) / "model.onnx").unlink()
    (copy_model("knn-cls", repo) / "model.onnx").write_bytes(b"\x08\x07garbage" * 100)
    (copy_model("knn-adapool-mean", repo) / "manifest.json").write_text('{"name": "trunc')
    broken = {
        "knn-max": "model.onnx: is missing",
        "knn-cls": "model.onnx: InvalidProtobuf",
        "knn-adapool-mean": "manifest.json: field '(file)': is not valid JSON",
    }
    flags = ["--default-model", "knn-avg"]
    with process.running_server(repo, flags, wait_for="/health/live") as (url, _):
        ready = httpx.get(f"{url}/health/ready")
        listed = {m["name"]: m["latest"] for m in httpx.get(f"{url}/models").json()["models"]}
        refused = {
            name: httpx.post(f"{url}/models/{name}/pool", json={"embeddings": [[[0.5] * D]]})
            for name in broken
        }
        serves(url, "knn-avg")
        metrics = scrape(url)
    assert ready.status_code == 503
    problems = ready.json()["problems"]
    print(f"\nbroken models at start-up: readiness 503, problems {problems}")
    assert len(problems) == len(broken)
    for name, reason in broken.items():
        assert any(p.startswith(f"{name}/1: ") and reason in p for p in problems), (name, problems)
        assert listed[name]["ready"] is False and reason in listed[name]["error"]
        assert_error(refused[name], 503, "not_ready")
        assert sample(metrics, "adapool_model_ready", model=name, version="1") == 0
    assert listed["knn-avg"]["ready"] is True
    assert sample(metrics, "adapool_model_ready", model="knn-avg", version="1") == 1


def disconnect_while_queued(url: str, count: int) -> None:
    """``count`` clients send a valid request and leave while it waits for its batch."""
    parsed = urlparse(url)
    body = json.dumps({"embeddings": [[[0.5] * D] * 4]}).encode()
    request = (
        b"POST /models/knn-avg/pool HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    sockets = [
        socket.create_connection((parsed.hostname, parsed.port), timeout=5) for _ in range(count)
    ]
    for s in sockets:
        s.sendall(request)
    time.sleep(0.3)  # read and queued: the batch waits max_wait_ms (1 s)
    for s in sockets:
        s.close()


def test_clients_that_leave_are_dropped_counted_and_leak_nothing() -> None:
    with process.running_server(REPOSITORY, ["--max-wait-ms", "1000"]) as (url, server):
        serves(url, "knn-avg")
        before = scrape(url)
        rss = []
        for _ in range(5):
            disconnect_while_queued(url, 40)
            time.sleep(1.5)  # the batch ran (without them)
            rss.append(rss_bytes(server.pid))
        after = scrape(url)
        serves(url, "knn-avg")

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    gone = delta("adapool_rejected_requests_total", model="knn-avg", reason="client_gone")
    print(
        f"\nclients gone: 200 left while queued; client_gone +{gone:.0f}; in flight after "
        f"{sample(after, 'adapool_requests_in_flight'):.0f} (the scrape itself); RSS per round "
        f"{[round(r / 2**20, 1) for r in rss]} MiB"
    )
    assert gone == 200
    assert delta("adapool_batch_size_count", model="knn-avg") == 0  # no model run for them
    assert sample(after, "adapool_requests_in_flight") == 1  # only the /metrics request itself
    assert sample(after, "adapool_queue_depth", model="knn-avg") == 0
    assert rss[-1] - rss[0] <= 16 * 2**20
