"""The core on its own: a fake backend, an isolated metrics registry, no HTTP.

The runtime is driven as a front-end drives it (a :class:`Caller`), and every figure is read
back from its own registry: admission, the one rejection count per refusal, readiness and its
gauge, the per-item results and diagnostics, and finite-output checks.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.core import runtime as runtime_module
from service.core.batching import Place
from service.core.calls import Batch, Work
from service.core.models import ServedVersion
from service.core.runtime import Runtime, threads_per_run
from service.errors import (
    InvalidInput,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    Unauthorized,
)
from service.metrics import Metrics
from service.settings import Settings
from tests.service.server import REPOSITORY

pytestmark = pytest.mark.anyio
D = 16


class FakeBackend:
    """pooled = masked mean of the tokens, weights uniform over real tokens (2 heads); a run
    waits for ``gate`` and overflows (NaN) for items whose first value is 1e30."""

    provider = "FakeExecutionProvider"
    input_dim = D
    problem: str | None = None
    gate: threading.Event | None = None
    fail_warm_up = False

    def __init__(self, model_file: Path, settings: Settings) -> None:
        self.model_file = model_file
        self.providers = [self.provider]
        self.outputs = ["pooled", "weights"]
        self.runs: list[int] = []

    def run(self, x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        if FakeBackend.gate is not None:
            FakeBackend.gate.wait(5)
        self.runs.append(len(x))
        w = mask / mask.sum(1, keepdims=True)
        pooled = (w[..., None] * x).sum(1).astype(np.float32)
        pooled[x[:, 0, 0] >= 1e30] = np.nan
        weights = np.repeat(w[:, None, :], 2, axis=1).astype(np.float32)
        return {"pooled": pooled, "weights": weights}

    def warm_up(self) -> None:
        if FakeBackend.fail_warm_up:
            raise RuntimeError("the device went away")


class Caller:
    """A front-end that hands the core a fixed batch."""

    def __init__(self, x: np.ndarray, lengths: list[int] | None = None, diagnostics: bool = True):
        lengths = lengths or [x.shape[1]] * len(x)
        mask = np.arange(x.shape[1])[None, :] < np.asarray(lengths)[:, None]
        self.work = Work(Batch(x, mask, np.asarray(lengths)), diagnostics, top_k=2)
        self.models: list[str] = []
        self.reads = 0
        self.place: Place | None = None

    def on_model(self, served: ServedVersion) -> None:
        self.models.append(served.label)

    async def read(self, served: ServedVersion) -> Work:
        self.reads += 1
        return self.work

    async def is_disconnected(self) -> bool:
        return False


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """Two of the committed models' manifests, with placeholder graphs (the fake reads none)."""
    for name in ("signature-adapool", "knn-avg"):
        target = tmp_path / name / "1"
        target.mkdir(parents=True)
        shutil.copy(REPOSITORY / name / "1" / "manifest.json", target)
        (target / "model.onnx").write_bytes(b"fake")
    FakeBackend.gate, FakeBackend.fail_warm_up = None, False
    return tmp_path


def runtime(repository: Path, **settings: object) -> tuple[Runtime, CollectorRegistry]:
    registry = CollectorRegistry()
    config = Settings(model_repository=repository, **settings)  # type: ignore[arg-type]
    return Runtime(config, Metrics(registry), backend=FakeBackend), registry


def rejected(registry: CollectorRegistry, model: str, reason: str) -> float:
    labels = {"model": model, "reason": reason}
    return registry.get_sample_value("adapool_rejected_requests_total", labels) or 0.0


def ready_gauge(registry: CollectorRegistry, model: str) -> float | None:
    return registry.get_sample_value("adapool_model_ready", {"model": model, "version": "1"})


def tokens(items: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((items, n, D)).astype(np.float32)


async def test_pool_returns_each_items_rows_and_diagnostics(repository: Path) -> None:
    core, _ = runtime(repository)
    await core.start()
    try:
        x = tokens(3, 6)
        caller = Caller(x, lengths=[6, 2, 4])
        result = await core.pool("signature-adapool", None, caller)
        assert caller.models == ["signature-adapool/1"] and caller.reads == 1
        np.testing.assert_allclose(result.outputs["pooled"][1], x[1, :2].mean(0), atol=1e-6)
        assert result.outputs["weights"].shape == (3, 2, 6)
        assert result.mean_weights[1, :2].tolist() == [0.5, 0.5]
        assert result.diagnostics is not None and len(result.diagnostics) == 3
        assert result.diagnostics[1]["effective_tokens"] == pytest.approx(2.0)
        assert result.diagnostics[2]["signal_tokens"] == [0, 1, 2, 3]  # uniform: all signal
        plain = await core.pool("signature-adapool", None, Caller(x, diagnostics=False))
        assert plain.diagnostics is None and plain.summary is None
    finally:
        await core.stop()


async def test_refusals_are_counted_once_under_their_reason(repository: Path) -> None:
    core, registry = runtime(repository, api_key="k")
    with pytest.raises(NotReady, match="loading"):
        await core.pool("knn-avg", None, Caller(tokens(1, 2)))
    assert rejected(registry, "", "not_ready") == 1
    await core.start()
    try:
        with pytest.raises(Unauthorized):
            core.authorize("Bearer nope")
        core.authorize("Bearer k")
        assert rejected(registry, "", "unauthorized") == 1
        with pytest.raises(NotFound):
            await core.pool("no-such-model", None, Caller(tokens(1, 2)))
        caller = Caller(np.zeros((1, 2, D + 1), dtype=np.float32))
        with pytest.raises(InvalidInput, match="token dim 17"):
            await core.pool("knn-avg", None, caller)
        assert rejected(registry, "knn-avg", "invalid") == 1
        # nothing counted for a name nobody serves (no label to count it under)
        assert rejected(registry, "no-such-model", "invalid") == 0
    finally:
        await core.stop()


async def test_a_full_queue_refuses_before_the_body_is_read(repository: Path) -> None:
    core, registry = runtime(
        repository, max_queue_requests=1, max_batch_size=1, max_items_per_request=1,
        retry_after_seconds=3, model_instances=1,
    )  # fmt: skip
    await core.start()
    FakeBackend.gate = threading.Event()
    try:
        running = asyncio.create_task(core.pool("knn-avg", None, Caller(tokens(1, 2))))
        await asyncio.sleep(0.05)  # the first run is blocked on the gate
        # the next run is prepared while the first one runs; the one after it queues
        queued = []
        for _ in range(2):
            queued.append(asyncio.create_task(core.pool("knn-avg", None, Caller(tokens(1, 2)))))
            await asyncio.sleep(0.05)
        refused = Caller(tokens(1, 2))
        with pytest.raises(Overloaded) as caught:
            await core.pool("knn-avg", None, refused)
        assert caught.value.headers == {"Retry-After": "3"} and refused.reads == 0
        depth = registry.get_sample_value("adapool_queue_depth", {"model": "knn-avg"})
        assert depth == 1  # set by the batcher itself
        FakeBackend.gate.set()
        await asyncio.gather(running, *queued)
        assert rejected(registry, "knn-avg", "queue_full") == 1
    finally:
        FakeBackend.gate.set()
        await core.stop()


async def test_hold_admits_at_the_head_and_pool_uses_that_place(repository: Path) -> None:
    """hold(): a place for a ready version, the counted 429 once the queue is full, None for
    what the front-end's full path must answer; pool() takes the place it was given instead of
    admitting the request again, and frees one it does not use."""
    core, registry = runtime(repository, max_queue_requests=2, model_instances=1)
    assert core.hold("knn-avg", None) is None  # not loaded yet
    await core.start()
    try:
        assert core.hold("no-such-model", None) is None
        assert core.hold("knn-avg", 7) is None  # no such version
        first, second = core.hold("knn-avg", None), core.hold("knn-avg", 1)
        assert isinstance(first, Place) and isinstance(second, Place)
        refused = core.hold("knn-avg", None)
        assert isinstance(refused, Overloaded)
        assert rejected(registry, "knn-avg", "queue_full") == 1
        caller = Caller(tokens(1, 2))
        caller.place = first
        await core.pool("knn-avg", None, caller)  # with a full queue: its place is taken
        assert first.released and caller.reads == 1
        other = Caller(tokens(1, 2))
        other.place = second  # a place in another model's queue is freed, not used
        await core.pool("signature-adapool", None, other)
        assert second.released
        assert isinstance(core.hold("knn-avg", None), Place)
        assert rejected(registry, "knn-avg", "queue_full") == 1
    finally:
        await core.stop()


async def test_an_item_whose_outputs_overflow_is_named(repository: Path) -> None:
    """Finite in, finite out: a 422 naming the item, and the other requests of the same model
    run are answered normally."""
    core, registry = runtime(repository, max_wait_ms=50)
    await core.start()
    try:
        bad = tokens(3, 4)
        bad[2, 0, 0] = 1e30  # finite, but the fake model's output for it is not
        good = tokens(1, 4, seed=1)
        results = await asyncio.gather(
            core.pool("knn-avg", None, Caller(bad)),
            core.pool("knn-avg", None, Caller(good)),
            return_exceptions=True,
        )
        assert isinstance(results[0], InvalidInput)
        assert results[0].detail == {"field": "embeddings", "item": 2, "items": [2]}
        assert not isinstance(results[1], BaseException)
        assert np.isfinite(results[1].outputs["pooled"]).all()
        assert rejected(registry, "knn-avg", "invalid") == 1
    finally:
        await core.stop()


async def test_readiness_runs_a_forward_pass_and_publishes_it(repository: Path) -> None:
    core, registry = runtime(repository)
    assert core.problems() == ["models are loading"]
    await core.start()
    try:
        assert await core.readiness() == [] and ready_gauge(registry, "knn-avg") == 1
        FakeBackend.fail_warm_up = True
        problems = await core.readiness()
        assert len(problems) == 2 and "the device went away" in problems[0]
        assert ready_gauge(registry, "knn-avg") == 0
        FakeBackend.fail_warm_up = False
        assert await core.readiness() == [] and ready_gauge(registry, "knn-avg") == 1
    finally:
        await core.stop()
    assert core.problems() == ["shutting down"]


async def test_a_broken_manifest_is_not_ready_with_its_file_and_field(repository: Path) -> None:
    manifest = repository / "knn-avg" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["pooling"]
    manifest.write_text(json.dumps(data))
    core, registry = runtime(repository)
    await core.start()
    try:
        (problem,) = core.problems()
        assert str(manifest) in problem and "field 'pooling': is missing" in problem
        assert ready_gauge(registry, "knn-avg") == 0
        assert ready_gauge(registry, "signature-adapool") == 1
        described = core.resolve("knn-avg", None).describe()
        assert not described.ready and described.error and "pooling" in described.error
        with pytest.raises(NotReady, match="pooling"):
            await core.pool("knn-avg", None, Caller(tokens(1, 2)))
        assert (await core.pool("signature-adapool", None, Caller(tokens(1, 2)))).outputs
    finally:
        await core.stop()


async def test_a_graph_that_disagrees_with_its_manifest_is_not_ready(repository: Path) -> None:
    manifest = repository / "knn-avg" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["input_dim"] = 8  # the graph (the fake) takes 16
    data["inputs"][0]["shape"][2] = 8
    manifest.write_text(json.dumps(data))
    core, _ = runtime(repository)
    await core.start()
    try:
        (problem,) = core.problems()
        assert "16-dim tokens, the manifest says 8" in problem
    finally:
        await core.stop()


def test_every_error_of_a_request_is_a_service_error() -> None:
    """What Runtime.pool raises is what a front-end renders: one family."""
    for error in (NotReady("x"), NotFound("x"), Overloaded(1, 1), InvalidInput("x")):
        assert isinstance(error, ServiceError) and error.status in (404, 422, 429, 503)


def test_threads_per_run_divide_the_cores_among_the_instances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime_module, "cores", lambda: 16)
    assert threads_per_run(2, 0) == 8
    assert threads_per_run(3, 0) == 5
    assert threads_per_run(32, 0) == 1  # never 0: that would be all
    assert threads_per_run(1, 0) == 0  # ONNX Runtime's own: all cores
    assert threads_per_run(1, 3) == 3
    # a version's threads (a pod's CPU request, say), divided among its instances
    assert threads_per_run(2, 4) == 2
    assert threads_per_run(2, 1) == 1


async def test_a_masked_query_token_is_refused_naming_the_item(repository: Path) -> None:
    target = repository / "knn-adapool-ego" / "1"  # its query is token 0
    target.mkdir(parents=True)
    shutil.copy(REPOSITORY / "knn-adapool-ego" / "1" / "manifest.json", target)
    (target / "model.onnx").write_bytes(b"fake")
    core, registry = runtime(repository)
    await core.start()
    try:
        x = np.random.default_rng(0).standard_normal((3, 4, 16)).astype(np.float32)
        caller = Caller(x)
        caller.work.batch.attention_mask[2, 0] = False  # item 2's query token is padding
        with pytest.raises(InvalidInput, match=r"query token\(s\) \[0\]") as caught:
            await core.pool("knn-adapool-ego", None, caller)
        assert caught.value.detail["item"] == 2 and "embeddings[2]" in caught.value.message
        assert (await core.pool("knn-adapool-ego", None, Caller(x))).outputs["pooled"].shape[0] == 3
        assert rejected(registry, "knn-adapool-ego", "invalid") == 1
    finally:
        await core.stop()
