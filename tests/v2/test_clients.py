"""The KServe v2 protocol with Triton's own clients (tritonclient 2.73 from PyPI) against the real
server (``python -m service``, HTTP and gRPC on loopback): health, metadata, config, infer in
binary and JSON with ragged masks, equal to ONNX Runtime on the model file, requested outputs,
errors with their statuses and messages, compression, and the API key."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from bench import process
from bench.serve import server_stats
from tests.service.server import REPOSITORY

MODEL, KNN = "signature-adapool", "knn-avg"
D = 16
KEY = "v2-key"
DIAGNOSTICS = ("entropy", "effective_tokens", "estimated_snr", "noise_mass", "signal_mask")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str]]:
    """(HTTP host:port, gRPC host:port) of one server."""
    port = process.free_port()
    with process.running_server(REPOSITORY, ["--grpc-port", str(port)]) as (url, _):
        yield url.removeprefix("http://"), f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[str, str]]:
    port = process.free_port()
    flags = ["--grpc-port", str(port), "--api-key", KEY]
    with process.running_server(REPOSITORY, flags) as (url, _):
        yield url.removeprefix("http://"), f"127.0.0.1:{port}"


def ragged(items: int = 4, tokens: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((items, tokens, D)).astype(np.float32)
    mask = np.ones((items, tokens), dtype=bool)
    for i in range(items):
        mask[i, rng.integers(1, tokens + 1) :] = False
    mask[-1, 3] = False  # a hole inside an item as well
    return x, mask


def onnx_outputs(model: str, x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(REPOSITORY / model / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {"embeddings": x, "attention_mask": mask})
    return dict(zip(names, values, strict=True))


def http_inputs(x: np.ndarray, mask: np.ndarray, binary: bool) -> list[httpclient.InferInput]:
    inputs = [
        httpclient.InferInput("embeddings", list(x.shape), "FP32"),
        httpclient.InferInput("attention_mask", list(mask.shape), "BOOL"),
    ]
    inputs[0].set_data_from_numpy(x, binary_data=binary)
    inputs[1].set_data_from_numpy(mask, binary_data=binary)
    return inputs


def grpc_inputs(x: np.ndarray, mask: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("embeddings", list(x.shape), "FP32"),
        grpcclient.InferInput("attention_mask", list(mask.shape), "BOOL"),
    ]
    inputs[0].set_data_from_numpy(x)
    inputs[1].set_data_from_numpy(mask)
    return inputs


def assert_matches(result: object, model: str, x: np.ndarray, mask: np.ndarray) -> None:
    want = onnx_outputs(model, x, mask)
    for name in ("pooled", "weights"):
        got = result.as_numpy(name)  # type: ignore[attr-defined]
        assert got.shape == want[name].shape, name
        np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-5, err_msg=name)
    signal = result.as_numpy("signal_mask")  # type: ignore[attr-defined]
    assert signal.shape == mask.shape and not signal[~mask].any()
    entropy = result.as_numpy("entropy")  # type: ignore[attr-defined]
    effective = result.as_numpy("effective_tokens")  # type: ignore[attr-defined]
    np.testing.assert_allclose(effective, np.exp(entropy), rtol=1e-5)
    assert (effective <= mask.sum(1) + 1e-3).all()


def test_health_metadata_and_config_over_http(server: tuple[str, str]) -> None:
    c = httpclient.InferenceServerClient(server[0])
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready(MODEL) and c.is_model_ready(MODEL, "1")
    assert not c.is_model_ready("no-such-model")
    meta = c.get_server_metadata()
    assert meta["name"] == "adapool-serve"
    assert meta["extensions"] == ["binary_tensor_data", "model_configuration"]
    model = c.get_model_metadata(MODEL)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [
        {"name": "embeddings", "datatype": "FP32", "shape": [-1, -1, D]},
        {"name": "attention_mask", "datatype": "BOOL", "shape": [-1, -1]},
    ]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in model["outputs"]}
    assert outputs["pooled"] == ("FP32", [-1, D]) and outputs["weights"] == ("FP32", [-1, 2, -1])
    assert outputs["signal_mask"] == ("BOOL", [-1, -1]) and outputs["entropy"] == ("FP32", [-1])
    config = c.get_model_config(MODEL)
    assert config["max_batch_size"] == 64 and "dynamic_batching" in config
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["instance_group"][0]["count"] == 2
    assert [i["name"] for i in config["input"]] == ["embeddings", "attention_mask"]
    # optional: perf_analyzer then sends embeddings alone, as to a Triton model without a mask
    assert config["input"][1]["optional"] and "optional" not in config["input"][0]
    assert {o["name"] for o in config["output"]} == set(outputs)
    entropy = next(o for o in config["output"] if o["name"] == "entropy")
    assert entropy["dims"] == [1] and entropy["reshape"] == {"shape": []}
    with pytest.raises(InferenceServerException, match="no version 7"):
        c.get_model_metadata(MODEL, "7")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_over_http_equals_onnxruntime(server: tuple[str, str], binary: bool) -> None:
    c = httpclient.InferenceServerClient(server[0])
    x, mask = ragged()
    result = c.infer(MODEL, http_inputs(x, mask, binary), request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    assert_matches(result, MODEL, x, mask)
    answered = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(answered) == {"pooled", "weights", *DIAGNOSTICS}
    # JSON inputs and outputs of a Triton-style client that asks for JSON answers
    outputs = [httpclient.InferRequestedOutput("pooled", binary_data=False)]
    pooled = c.infer(KNN, http_inputs(x, mask, binary), outputs=outputs)
    assert "data" in pooled.get_response()["outputs"][0]
    np.testing.assert_allclose(
        pooled.as_numpy("pooled"), onnx_outputs(KNN, x, mask)["pooled"], atol=1e-5
    )


def test_v2_answers_are_timed_in_the_encode_stage(server: tuple[str, str]) -> None:
    def encodes() -> float:
        return server_stats(f"http://{server[0]}", MODEL).get("encode_count", 0.0)

    before = encodes()
    x, mask = ragged(seed=2)
    httpclient.InferenceServerClient(server[0]).infer(MODEL, http_inputs(x, mask, True))
    grpcclient.InferenceServerClient(server[1]).infer(MODEL, grpc_inputs(x, mask))
    assert encodes() == before + 2


def test_infer_over_grpc_equals_onnxruntime(server: tuple[str, str]) -> None:
    c = grpcclient.InferenceServerClient(server[1])
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(MODEL)
    assert c.get_server_metadata().name == "adapool-serve"
    assert c.get_model_config(MODEL).config.max_batch_size == 64
    x, mask = ragged(seed=1)
    assert_matches(c.infer(MODEL, grpc_inputs(x, mask)), MODEL, x, mask)
    only = c.infer(MODEL, grpc_inputs(x, mask), outputs=[grpcclient.InferRequestedOutput("pooled")])
    assert [o.name for o in only.get_response().outputs] == ["pooled"]
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        c.infer("no-such-model", grpc_inputs(x, mask))
    with pytest.raises(InferenceServerException, match="token dim 15"):
        wrong = grpcclient.InferInput("embeddings", [1, 2, 15], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 2, 15), np.float32))
        c.infer(MODEL, [wrong])


def test_async_clients_under_concurrency(server: tuple[str, str]) -> None:
    """tritonclient's aio clients (HTTP and gRPC), 16 requests at once each."""
    x, mask = ragged(items=2, tokens=20, seed=2)
    want = onnx_outputs(MODEL, x, mask)["pooled"]

    async def run() -> list[np.ndarray]:
        http = http_aio.InferenceServerClient(server[0])
        grpc = grpc_aio.InferenceServerClient(server[1])
        try:
            http_inputs_ = http_inputs(x, mask, True)
            grpc_inputs_ = [
                grpc_aio.InferInput("embeddings", list(x.shape), "FP32"),
                grpc_aio.InferInput("attention_mask", list(mask.shape), "BOOL"),
            ]
            grpc_inputs_[0].set_data_from_numpy(x)
            grpc_inputs_[1].set_data_from_numpy(mask)
            calls = [http.infer(MODEL, http_inputs_) for _ in range(16)]
            calls += [grpc.infer(MODEL, grpc_inputs_) for _ in range(16)]
            return [r.as_numpy("pooled") for r in await asyncio.gather(*calls)]
        finally:
            await http.close()
            await grpc.close()

    for pooled in asyncio.run(run()):
        np.testing.assert_allclose(pooled, want, atol=1e-5)


def v2_post(host: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"http://{host}/v2/models/{MODEL}/infer", content=body, headers=headers)


def json_request(x: np.ndarray, **extra: object) -> dict[str, object]:
    tensor = {"name": "embeddings", "shape": list(x.shape), "datatype": "FP32"}
    return {"inputs": [tensor | {"data": x.reshape(-1).tolist()}], **extra}


def tensor(name: str, shape: list[int], datatype: str, data: list[object]) -> dict[str, object]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def body(*inputs: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


ONE = tensor("embeddings", [1, 1, D], "FP32", [0.5] * D)


@pytest.mark.parametrize(
    ("request_body", "headers", "status", "words"),
    [
        (b"{nope", {}, 400, "not valid JSON"),
        (body(), {}, 400, "non-empty 'inputs'"),
        (body(tensor("x", [1], "FP32", [1.0])), {}, 400, "unknown input 'x'"),
        (body(tensor("embeddings", [1, 1, D], "INT32", [1] * D)), {}, 400, "datatype 'INT32'"),
        (
            body(tensor("embeddings", [1, 2, D], "FP32", [0.5] * D)),
            {},
            400,
            f"has {D} elements, shape [1, 2, {D}] needs {2 * D}",
        ),
        (
            body(tensor("embeddings", [1, 1, D], "FP32", [True] + [0.5] * (D - 1))),
            {},
            400,
            "numbers only",
        ),
        (
            body(ONE, tensor("attention_mask", [1, 1], "BOOL", [1])),
            {},
            400,
            "BOOL data must be true or false",
        ),
        (
            body(tensor("attention_mask", [1, 1], "BOOL", [True])),
            {},
            400,
            "input 'embeddings' is missing",
        ),
        (body(ONE), {"Inference-Header-Content-Length": "99999999999999999999"}, 400, "has only"),
        (body(ONE), {"Inference-Header-Content-Length": "-4"}, 400, "must be an integer"),
        (body(ONE), {"Content-Encoding": "br"}, 400, "not supported"),
        (body(ONE, outputs=[{"name": "everything"}]), {}, 400, "unknown output 'everything'"),
        (body(ONE, extra=1), {}, 400, "unknown keys ['extra']"),
        (body(ONE, parameters={"nested": {"a": 1}}), {}, 400, "must be a boolean, number"),
    ],
)
def test_malformed_requests_are_400_naming_the_input(
    server: tuple[str, str], request_body: bytes, headers: dict[str, str], status: int, words: str
) -> None:
    r = v2_post(server[0], request_body, headers)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


def test_binary_sizes_are_checked_against_the_body(server: tuple[str, str]) -> None:
    x = np.zeros((1, 2, D), np.float32)
    header = {
        "inputs": [
            {
                "name": "embeddings",
                "shape": [1, 2, D],
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ]
    }
    text = json.dumps(header).encode()
    length = {"Inference-Header-Content-Length": str(len(text))}
    assert v2_post(server[0], text + x.tobytes(), length).status_code == 200
    short = v2_post(server[0], text + x.tobytes()[:-4], length)
    assert short.status_code == 400 and "run past the end" in short.json()["error"]
    extra = v2_post(server[0], text + x.tobytes() + b"\0" * 8, length)
    assert extra.status_code == 400 and "add up to" in extra.json()["error"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_both_ways(server: tuple[str, str], encoding: str) -> None:
    x, _ = ragged(items=2, tokens=5)
    text = json.dumps(json_request(x, outputs=[{"name": "pooled"}])).encode()
    packed = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)
    headers = {"Content-Encoding": encoding, "Accept-Encoding": encoding}
    raw = httpx.post(f"http://{server[0]}/v2/models/{MODEL}/infer", content=packed, headers=headers)
    assert raw.status_code == 200 and raw.headers["content-encoding"] == encoding
    pooled = np.asarray(raw.json()["outputs"][0]["data"], np.float32).reshape(2, D)
    mask = np.ones((2, 5), bool)
    np.testing.assert_allclose(pooled, onnx_outputs(MODEL, x, mask)["pooled"], atol=1e-5)
    c = httpclient.InferenceServerClient(server[0])
    result = c.infer(
        MODEL,
        http_inputs(x, mask, True),
        request_compression_algorithm=encoding,
        response_compression_algorithm=encoding,
    )
    np.testing.assert_allclose(
        result.as_numpy("pooled"), onnx_outputs(MODEL, x, mask)["pooled"], atol=1e-5
    )


def test_the_api_key_over_http_and_grpc(keyed: tuple[str, str]) -> None:
    x, mask = ragged(items=1, tokens=4)
    anonymous = httpclient.InferenceServerClient(keyed[0])
    assert anonymous.is_server_ready()  # health stays open by default
    with pytest.raises(InferenceServerException, match="401"):
        anonymous.infer(MODEL, http_inputs(x, mask, True))
    with pytest.raises(InferenceServerException, match="API key"):
        anonymous.get_model_metadata(MODEL)
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = anonymous.infer(MODEL, http_inputs(x, mask, True), headers=headers)
    assert answer.as_numpy("pooled").shape == (1, D)
    grpc = grpcclient.InferenceServerClient(keyed[1])
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        grpc.infer(MODEL, grpc_inputs(x, mask))
    metadata = {"authorization": f"Bearer {KEY}"}  # gRPC metadata keys are lower case
    pooled = grpc.infer(MODEL, grpc_inputs(x, mask), headers=metadata).as_numpy("pooled")
    assert pooled.shape == (1, D)


def test_unknown_routes_and_versions_answer_the_v2_body(server: tuple[str, str]) -> None:
    host = server[0]
    for path in ("/v2/nothing", "/v2/models/no-such-model", f"/v2/models/{MODEL}/versions/9"):
        r = httpx.get(f"http://{host}{path}")
        assert r.status_code == 404 and set(r.json()) == {"error"}, (path, r.text)
    bad_version = httpx.get(f"http://{host}/v2/models/{MODEL}/versions/one")
    assert bad_version.status_code == 400 and "integer" in bad_version.json()["error"]


def test_v2_requests_have_their_own_route_label(server: tuple[str, str]) -> None:
    text = httpx.get(f"http://{server[0]}/metrics").text
    assert 'route="/v2/models/{name}/infer"' in text
    assert 'route="grpc ModelInfer"' in text
