"""Task heads through the service: a classification model's label and probabilities in JSON and
.npz, its exact per-token contributions on request, and the same over the KServe v2 routes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from asgi_lifespan import LifespanManager

from modelrepo import read_manifest
from service.app import create_app
from service.settings import Settings
from tests.service.server import REPOSITORY, STARTUP_SECONDS

pytestmark = pytest.mark.anyio
MODEL = "digits-bags-adapool"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def client() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(model_repository=REPOSITORY, models=[MODEL, "knn-avg"], default_model=MODEL)
    app = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        yield c


def bags() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).random((3, 7, 64)).astype(np.float32)
    mask = np.ones((3, 7), dtype=bool)
    mask[1, 4:] = False
    return x, mask


def onnx(x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(REPOSITORY / MODEL / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {"embeddings": x, "attention_mask": mask})
    return dict(zip(names, values, strict=True))


async def test_labels_probabilities_and_contributions_in_json() -> None:
    x, mask = bags()
    ragged = [x[i, : int(mask[i].sum())].tolist() for i in range(3)]
    async with client() as c:
        r = await c.post("/pool?contributions=true", json={"embeddings": ragged})
        plain = await c.post("/pool", json={"embeddings": ragged})
        refused = await c.post("/models/knn-avg/pool?contributions=true", json={
            "embeddings": [[[0.1] * 16]]})  # fmt: skip
    assert r.status_code == 200, r.text
    answer = r.json()
    want = onnx(x, mask)
    logits = want["logits"]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-5)
    classes = read_manifest(REPOSITORY / MODEL / "1" / "manifest.json").task.classes
    assert answer["label"] == [classes[i] for i in logits.argmax(axis=1)]
    bias = np.asarray(read_manifest(REPOSITORY / MODEL / "1" / "manifest.json").contribution_bias)
    for i, item in enumerate(answer["contributions"]):
        terms = np.asarray(item)
        assert terms.shape == (int(mask[i].sum()), 2)  # the item's own tokens only
        np.testing.assert_allclose(terms.sum(axis=0) + bias, logits[i], atol=1e-4)
    assert "contributions" not in plain.json() and plain.json()["label"] == answer["label"]
    assert refused.status_code == 422 and "no contributions output" in refused.text


async def test_the_npz_answer_carries_the_predictions() -> None:
    x, mask = bags()
    buffer = io.BytesIO()
    np.save(buffer, x)
    headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npz"}
    async with client() as c:
        r = await c.post("/pool?contributions=true", content=buffer.getvalue(), headers=headers)
    arrays = np.load(io.BytesIO(r.content))
    want = onnx(x, np.ones_like(mask))
    np.testing.assert_allclose(arrays["logits"], want["logits"], atol=1e-5)
    assert arrays["classes"].tolist() == ["no 9", "has a 9"]
    assert arrays["label"].tolist() == want["logits"].argmax(axis=1).tolist()
    np.testing.assert_allclose(arrays["contributions"], want["contributions"], atol=1e-5)


async def test_v2_outputs_include_the_task_head() -> None:
    x, mask = bags()
    request = {
        "inputs": [
            {"name": "embeddings", "shape": list(x.shape), "datatype": "FP32",
             "data": x.reshape(-1).tolist()},
            {"name": "attention_mask", "shape": list(mask.shape), "datatype": "BOOL",
             "data": mask.reshape(-1).tolist()},
        ],
        "outputs": [{"name": "logits"}, {"name": "contributions"}],
    }  # fmt: skip
    async with client() as c:
        meta = (await c.get(f"/v2/models/{MODEL}")).json()
        r = await c.post(f"/v2/models/{MODEL}/infer", json=request)
    assert {"logits", "contributions"} <= {o["name"] for o in meta["outputs"]}
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    want = onnx(x, mask)
    got = np.asarray(outputs["logits"]["data"], np.float32).reshape(outputs["logits"]["shape"])
    np.testing.assert_allclose(got, want["logits"], atol=1e-5)
    assert outputs["contributions"]["shape"] == [3, 7, 2]
