"""fp16 versions: ``python -m export --precision fp16`` on two committed trained checkpoints (the
default pooling model and the digits classifier, which exports logits and contributions),
verified against PyTorch's float32 and served like any version."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from asgi_lifespan import LifespanManager

from export.cli import main
from export.parity import FP16_TOLERANCE
from export.verify import main as verify_main
from service.app import create_app
from service.settings import Settings
from tests.service.server import REPOSITORY, STARTUP_SECONDS

MODELS = ("knn-adapool-ego", "digits-bags-adapool")


@pytest.fixture(scope="module")
def fp16_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 1 of each of MODELS, exported as fp16 from its committed checkpoint."""
    repo = tmp_path_factory.mktemp("fp16") / "repo"
    for name in MODELS:
        checkpoint = REPOSITORY / name / "1" / "checkpoint"
        argv = [str(checkpoint), "--name", name, "--version", "1", "--repository", str(repo)]
        assert main([*argv, "--precision", "fp16"]) == 0
    return repo


def test_fp16_versions_verify(fp16_repository: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([str(fp16_repository)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 model versions passed" in out
    assert "precision fp16 as the manifest says" in out
    assert "(tolerance 0.01)" in out and "parity padding filled with nan" in out


@pytest.mark.parametrize("name", MODELS)
def test_the_graph_is_fp16_inside_and_fp32_at_its_edges(fp16_repository: Path, name: str) -> None:
    version = fp16_repository / name / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    assert manifest["export"]["parity_tolerance"] == FP16_TOLERANCE
    assert manifest["command"].endswith("--precision fp16")
    worst = max(p["max_abs_diff_pooled"] for p in manifest["export"]["parity"])
    assert 1e-5 < worst <= FP16_TOLERANCE  # float16 inside: not float32's 1e-6
    graph = onnx.load(str(version / "model.onnx"))
    edges = [*graph.graph.input, *graph.graph.output]
    assert {v.type.tensor_type.elem_type for v in edges} <= {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.BOOL,
    }
    stored = {t.data_type for t in graph.graph.initializer if t.data_type != onnx.TensorProto.INT64}
    assert onnx.TensorProto.FLOAT16 in stored
    fp32 = REPOSITORY / name / "1" / "model.onnx"
    assert (version / "model.onnx").stat().st_size < fp32.stat().st_size
    kept = {n.op_type for n in graph.graph.node}
    assert {"Softmax", "MultiHeadAttention"} <= kept


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_service_serves_an_fp16_version(fp16_repository: Path) -> None:
    """The fp16 version answers like the committed fp32 one, within the fp16 tolerance."""
    rng = np.random.default_rng(0)
    body = {"embeddings": rng.standard_normal((3, 40, 16)).round(3).tolist()}
    answers = {}
    for repo in (fp16_repository, REPOSITORY):
        app = create_app(Settings(model_repository=repo, default_model="knn-adapool-ego"))
        async with (
            LifespanManager(app, startup_timeout=STARTUP_SECONDS),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
        ):
            assert (await c.get("/health/ready")).status_code == 200
            r = await c.post("/models/knn-adapool-ego/pool", json=body)
            assert r.status_code == 200, r.text
            answers[repo] = r.json()
            info = (await c.get("/models/knn-adapool-ego")).json()["versions"][0]
            assert info["precision"] == ("fp16" if repo == fp16_repository else "fp32")
    half, full = answers[fp16_repository], answers[REPOSITORY]
    assert np.abs(np.subtract(half["pooled"], full["pooled"])).max() <= FP16_TOLERANCE
    assert np.abs(np.subtract(half["weights"], full["weights"])).max() <= FP16_TOLERANCE
    assert np.allclose(np.sum(half["weights"], axis=1), 1.0, atol=1e-4)


def test_onnx_runtime_computes_an_fp16_graph_in_float32_on_cpu(fp16_repository: Path) -> None:
    """What BENCHMARKS.md says of fp16 on CPU (onnxruntime pinned): in the optimised graph only
    data movement reads float16; the matrix products read float32."""
    from bench.precision import float16_nodes

    nodes = float16_nodes(fp16_repository / "knn-adapool-ego" / "1" / "model.onnx")
    assert nodes["casts_written"] > nodes["casts_optimised"] > 0
    assert nodes["float16_ops_optimised"]
    assert not {"MatMul", "Gemm", "MultiHeadAttention", "Softmax"} & set(
        nodes["float16_ops_optimised"]
    )
