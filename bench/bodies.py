"""What ``python -m bench.compare`` sends to each server, and the check that each answers right.

A *series* is one server spoken to in one request format. Every server gets the same items
(``[B, 128, D]`` float32, all tokens real) and answers the same content: the pooled vectors and
the head-mean pooling weights of every item. Ours adds its diagnostics unless asked not to.
Before any load, :func:`check` sends one request and compares the answer with ONNX Runtime run
in process on the same items, so every server is known to serve the same model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from bench.serve import Body, post, write_body

V2_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class Series:
    name: str
    server: str  # ours | naive | litserve | triton
    fmt: str  # json | base64 | npy | v2json | v2binary
    label: str
    binary: bool  # the server's binary path (the targets compare these)
    query: str = ""
    accept: str = ""  # the Accept header, where the answer is not JSON


SERIES = (
    Series("ours-npy", "ours", "npy", "ours, .npy -> JSON + diagnostics", True),
    Series(
        "ours-npy-nodiag",
        "ours",
        "npy",
        "ours, .npy -> JSON, diagnostics=false",
        True,
        "?diagnostics=false",
    ),
    Series(
        "ours-npz",
        "ours",
        "npy",
        "ours, .npy -> .npz (pooled, weights)",
        True,
        accept="application/x-npz",
    ),
    Series("ours-json", "ours", "json", "ours, JSON lists -> JSON + diagnostics", False),
    Series("ours-v2-binary", "ours", "v2binary", "ours, v2 binary tensors", True),
    Series("ours-v2-json", "ours", "v2json", "ours, v2 JSON", False),
    Series("naive-json", "naive", "json", "naive FastAPI, JSON lists (pydantic)", False),
    Series("litserve-json", "litserve", "json", "LitServe, JSON lists", False),
    Series("litserve-b64", "litserve", "base64", "LitServe, base64 in JSON", True),
    Series("triton-json", "triton", "v2json", "Triton (PyTriton), v2 JSON", False),
    Series("triton-binary", "triton", "v2binary", "Triton (PyTriton), v2 binary tensors", True),
)
BY_NAME = {s.name: s for s in SERIES}


def write_v2_body(folder: Path, fmt: str, x: NDArray[np.float32]) -> Body:
    """A KServe v2 inference request for ``embeddings`` = ``x`` (no ``attention_mask``: every
    token real), asking for ``pooled`` and ``weights``: JSON tensors (answers in JSON) or the
    binary tensor extension (answers in binary too). Ours and Triton get the same bytes."""
    shape = list(x.shape)
    path = folder / f"{fmt}-{'x'.join(str(s) for s in shape)}.body"
    tensor: dict[str, Any] = {"name": "embeddings", "shape": shape, "datatype": "FP32"}
    if fmt == "v2json":
        outputs = [{"name": "pooled"}, {"name": "weights"}]
        body = {"inputs": [tensor | {"data": x.ravel().tolist()}], "outputs": outputs}
        path.write_bytes(orjson.dumps(body))
        return Body(path, "application/json", {})
    if fmt != "v2binary":
        raise ValueError(f"unknown v2 format {fmt!r}")
    data = x.astype("<f4").tobytes()
    binary = {"binary_data": True}
    header = orjson.dumps(
        {
            "inputs": [tensor | {"parameters": {"binary_data_size": len(data)}}],
            "outputs": [
                {"name": "pooled", "parameters": binary},
                {"name": "weights", "parameters": binary},
            ],
        }
    )
    path.write_bytes(header + data)
    return Body(path, "application/octet-stream", {V2_HEADER: str(len(header))})


def body_for(folder: Path, series: Series, x: NDArray[np.float32]) -> Body:
    if series.fmt.startswith("v2"):
        return write_v2_body(folder, series.fmt, x)
    body = write_body(folder, series.fmt, x)
    if series.accept:
        return Body(body.path, body.content_type, body.headers | {"Accept": series.accept})
    return body


def parse_v2(body: bytes, header_length: int | None) -> dict[str, NDArray[np.float32]]:
    """Output tensors of a KServe v2 answer, JSON or binary."""
    header = orjson.loads(body[:header_length] if header_length is not None else body)
    out, offset = {}, header_length or 0
    for tensor in header["outputs"]:
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            values = np.asarray(tensor["data"], dtype=np.float32)
        else:
            values = np.frombuffer(body[offset : offset + size], dtype="<f4")
            offset += size
        out[tensor["name"]] = values.reshape(tensor["shape"])
    return out


def answer_arrays(series: Series, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """``pooled`` [B, D_out] and ``weights`` [B, N] from one answer; ``diagnostics`` if any.
    Our v2 answer carries the graph's per-head weights [B, H, N] (Triton's peer, the head mean)."""
    if series.fmt.startswith("v2"):
        length = headers.get(V2_HEADER.lower())
        out = parse_v2(body, int(length) if length is not None else None)
        if out["weights"].ndim == 3:
            out["weights"] = out["weights"].mean(axis=1)
        return out
    if series.accept == "application/x-npz":
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {"pooled": npz["pooled"], "weights": npz["weights"].mean(axis=1)}
    answer = orjson.loads(body)
    out = {k: np.asarray(answer[k], dtype=np.float32) for k in ("pooled", "weights")}
    if "diagnostics" in answer:
        out["diagnostics"] = answer["diagnostics"]
    return out


def check(
    url: str,
    series: Series,
    body: Body,
    expected: tuple[NDArray[np.float32], NDArray[np.float32]],
    atol: float = 1e-4,
) -> None:
    """One request: 200 with the expected pooled vectors and head-mean weights (within
    ``atol`` of ONNX Runtime in process), with diagnostics exactly where they should be."""
    data, headers = post(url, body, timeout=120)
    got = answer_arrays(series, data, headers)
    pooled, weights = expected
    for name, want in (("pooled", pooled), ("weights", weights.mean(axis=1))):
        have = got[name]
        if have.shape != want.shape or not np.allclose(have, want, atol=atol):
            worst = float(np.abs(have - want).max()) if have.shape == want.shape else float("nan")
            raise RuntimeError(
                f"{series.name}: {name} {have.shape} differs from ONNX Runtime's {want.shape} "
                f"(max abs difference {worst:.2g})"
            )
    wants_diagnostics = (
        series.server == "ours"
        and not series.fmt.startswith("v2")  # asks for pooled and weights alone
        and "diagnostics=false" not in series.query
        and not series.accept
    )
    if ("diagnostics" in got) != wants_diagnostics:
        raise RuntimeError(f"{series.name}: diagnostics present: {'diagnostics' in got}")
