"""The wire, without I/O: a pool call as an HTTP request, and an answer as a :class:`PoolResult`.

Shared by :class:`~adapool_client.Client` and :class:`~adapool_client.AsyncClient`, which only
send what :func:`pool_request` builds and pass the answer to :func:`pool_result`.

The formats, chosen per call (``response_format="auto"``):

- request: a ``.npy`` body of the padded [B, N, D] batch (float32, or float16 when asked) with
  ``X-Lengths``; only an attention_mask with holes goes as JSON lists, the one format in which
  the server takes a mask;
- answer: ``.npz`` (pooled, per-head weights, lengths, attention_mask) by default; ``.npy``
  (pooled only) with ``weights="none"``; JSON when diagnostics are asked for, since only the
  JSON answer carries them (the binary answers have the model, version and provider in
  headers).
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx
import numpy as np
from numpy.typing import NDArray

from adapool_client._inputs import Prepared, UploadDtype
from adapool_client._results import Diagnostics, Float32Array, PoolResult, frozen

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
WeightsMode = Literal["mean", "heads", "none"]
ResponseFormat = Literal["auto", "npz", "npy", "json"]


@dataclass(frozen=True)
class PoolOptions:
    """A pool call's options but its input (see ``Client.pool``)."""

    model: str | None = None
    version: int | None = None
    weights: WeightsMode = "mean"
    diagnostics: bool = False
    top_k: int | None = None
    response_format: ResponseFormat = "auto"
    upload_dtype: UploadDtype | None = None

    def __post_init__(self) -> None:
        if self.weights not in ("mean", "heads", "none"):
            raise ValueError(f"weights: must be mean, heads or none, got {self.weights!r}")
        if self.version is not None and self.model is None:
            raise ValueError("version needs a model name: pool(..., model=NAME, version=V)")
        choose_format(self.response_format, self.weights, self.diagnostics)  # checks it


@dataclass(frozen=True)
class Request:
    """One POST: path, query, headers and body."""

    path: str
    params: dict[str, str]
    headers: dict[str, str]
    content: bytes
    # What the parser needs to know about the request.
    accept: str
    weights: WeightsMode
    lengths: NDArray[np.int64] = field(repr=False)


def encode_npy(array: NDArray[Any]) -> bytes:
    """``array`` (C-contiguous) as a version 1.0 .npy file, as ``numpy.save`` writes it."""
    header = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (  # noqa: UP031
        np.lib.format.dtype_to_descr(array.dtype),
        array.shape,
    )
    padding = -(10 + len(header) + 1) % 64
    text = (header + " " * padding + "\n").encode("latin-1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + array.tobytes()


def model_path(name: str) -> str:
    return f"/models/{quote(name, safe='')}"


def choose_format(response_format: ResponseFormat, weights: WeightsMode, diagnostics: bool) -> str:
    """The Accept media type; ValueError for a combination a format cannot carry."""
    if response_format == "auto":
        if diagnostics:
            return JSON
        return NPY if weights == "none" else NPZ
    if response_format == "json":
        return JSON
    if response_format == "npz":
        if diagnostics:
            raise ValueError(
                "response_format='npz': the .npz answer carries no diagnostics; use "
                "response_format='auto' or 'json', or diagnostics=False"
            )
        return NPZ
    if response_format == "npy":
        if diagnostics or weights != "none":
            raise ValueError(
                "response_format='npy': the .npy answer is the pooled vectors only; use "
                "weights='none' and diagnostics=False with it"
            )
        return NPY
    raise ValueError(f"response_format: must be auto, npz, npy or json, got {response_format!r}")


def pool_request(prepared: Prepared, options: PoolOptions, request_id: str | None) -> Request:
    """The POST for ``prepared`` with ``options``."""
    o = options
    accept = choose_format(o.response_format, o.weights, o.diagnostics)
    path = "/pool" if o.model is None else f"{model_path(o.model)}/pool"
    params: dict[str, str] = {}
    if o.version is not None:
        params["version"] = str(int(o.version))
    if accept == JSON:  # the options shape only the JSON answer
        params["return_weights"] = o.weights
        params["diagnostics"] = "true" if o.diagnostics else "false"
        if o.diagnostics and o.top_k is not None:
            params["top_k"] = str(int(o.top_k))
    headers = {"Accept": accept}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    if prepared.mask is None:
        headers["Content-Type"] = NPY
        headers["X-Lengths"] = ",".join(map(str, prepared.lengths.tolist()))
        content = encode_npy(prepared.embeddings)
    else:
        headers["Content-Type"] = JSON
        x = prepared.embeddings.astype(np.float32)
        items = [x[i, :n].tolist() for i, n in enumerate(prepared.lengths.tolist())]
        masks = [prepared.mask[i, :n].tolist() for i, n in enumerate(prepared.lengths.tolist())]
        content = json.dumps({"embeddings": items, "attention_mask": masks}).encode()
    return Request(path, params, headers, content, accept, o.weights, prepared.lengths)


def _trimmed(weights: NDArray[np.float32], lengths: list[int], mode: WeightsMode) -> Any:
    """(B, H, N) per-head weights -> per item (n,) head-mean or (H, n) per-head weights."""
    if mode == "none":
        return None
    if mode == "mean":
        mean = weights.mean(axis=1)  # as the server computes it for its JSON answer
        return tuple(frozen(mean[i, :n]) for i, n in enumerate(lengths))
    return tuple(frozen(weights[i, :, :n]) for i, n in enumerate(lengths))


# The header numpy.save writes (and the server): {'descr': '<f4', 'fortran_order': False, ...}
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=]?[a-z]\d{1,2})', 'fortran_order': (True|False), "
    r"'shape': \(((?:\d{1,12}, ?)*\d{0,12})\), \} *\n?"
)
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # a ZIP member's local header
_END = struct.Struct("<IHHHHIIH")  # the end of the central directory


def read_npy(content: bytes | memoryview) -> NDArray[Any]:
    """A .npy file as an array (no pickles). The canonical header is matched directly;
    anything else goes to numpy's reader (``ast.literal_eval`` per header)."""
    data = memoryview(content)
    if bytes(data[:8]) == b"\x93NUMPY\x01\x00" and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        found = _NPY_HEADER.fullmatch(bytes(data[10:end]).decode("latin-1"))
        if found is not None:
            descr, fortran, dims = found.groups()
            shape = tuple(int(x) for x in dims.split(",") if x.strip())
            dtype = np.dtype(descr)
            if dtype.hasobject or len(data) - end != math.prod(shape) * dtype.itemsize:
                raise ValueError(".npy data does not match its header")
            order: Literal["F", "C"] = "F" if fortran == "True" else "C"
            return np.frombuffer(data[end:], dtype=dtype).reshape(shape, order=order)
    return np.lib.format.read_array(io.BytesIO(bytes(data)), allow_pickle=False)


def read_npz(content: bytes) -> dict[str, NDArray[Any]]:
    """An .npz file's arrays. Uncompressed archives (the server's) are read in place, with
    their CRCs checked: a quarter of ``zipfile``'s time for a small answer. Anything else
    (compressed, ZIP64) goes to ``zipfile``."""
    out = _read_stored_zip(content)
    if out is not None:
        return {name.removesuffix(".npy"): read_npy(data) for name, data in out.items()}
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {
            name.removesuffix(".npy"): read_npy(archive.read(name)) for name in archive.namelist()
        }


def _read_stored_zip(content: bytes) -> dict[str, memoryview] | None:
    """Members of a ZIP whose members are all stored (method 0), or None to use zipfile."""
    if len(content) < _END.size or content[-_END.size : -_END.size + 4] != b"PK\x05\x06":
        return None  # a comment after the directory, or not a ZIP: zipfile decides
    _, _, _, _, count, _, _, _ = _END.unpack_from(content, len(content) - _END.size)
    data = memoryview(content)
    out: dict[str, memoryview] = {}
    offset = 0
    for _ in range(count):
        if offset + _LOCAL.size > len(content):
            return None
        sig, _, flags, method, _, _, crc, size, full, name_len, extra_len = _LOCAL.unpack_from(
            content, offset
        )
        if sig != 0x04034B50 or method != 0 or flags & 0x08 or size != full or size == 0xFFFFFFFF:
            return None
        start = offset + _LOCAL.size + name_len + extra_len
        member = data[start : start + size]
        if len(member) != size or zlib.crc32(member) != crc:
            return None
        name = bytes(data[offset + _LOCAL.size : offset + _LOCAL.size + name_len]).decode()
        out[name] = member
        offset = start + size
    return out


def pool_result(request: Request, response: httpx.Response) -> PoolResult:
    """The result of a 2xx answer to ``request``."""
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if media != request.accept:
        raise ValueError(f"asked for {request.accept}, the server answered {media or 'nothing'}")
    if media == JSON:
        return _from_json(request, json.loads(response.content))
    headers = response.headers
    meta: dict[str, Any] = {
        "model": headers.get("x-model", ""),
        "version": int(headers.get("x-model-version", "0")),
        "provider": headers.get("x-provider", ""),
        "request_id": headers.get("x-request-id", ""),
    }
    lengths = request.lengths
    task: dict[str, Any] = {}
    if media == NPY:
        pooled = read_npy(response.content)
        weights = None
    else:
        arrays = read_npz(response.content)
        pooled, lengths = arrays["pooled"], arrays["lengths"].astype(np.int64)
        weights = _trimmed(arrays["weights"], lengths.tolist(), request.weights)
        if "probabilities" in arrays:  # a classification model
            classes = arrays["classes"].tolist()
            task["label"] = tuple(classes[i] for i in arrays["label"].tolist())
            task["probabilities"] = _array(arrays["probabilities"])
        if "prediction" in arrays:  # a regression model
            task["prediction"] = _array(arrays["prediction"])
    return PoolResult(
        pooled=frozen(pooled.astype(np.float32, copy=False)),
        weights=weights,
        lengths=frozen(np.array(lengths, dtype=np.int64)),
        diagnostics=None,
        **meta,
        **task,
    )


def _array(value: Any) -> Float32Array:
    return frozen(np.asarray(value, dtype=np.float32))


def _from_json(request: Request, body: Mapping[str, Any]) -> PoolResult:
    weights = body.get("weights")
    diagnostics = body.get("diagnostics")
    task: dict[str, Any] = {}
    if body.get("label") is not None:  # a classification model
        task["label"] = tuple(body["label"])
        task["probabilities"] = _array(body["probabilities"])
    if body.get("prediction") is not None:  # a regression model
        task["prediction"] = _array(body["prediction"])
    return PoolResult(
        pooled=_array(body["pooled"]),
        weights=None if weights is None else tuple(_array(w) for w in weights),
        lengths=frozen(np.array(request.lengths, dtype=np.int64)),
        diagnostics=None
        if diagnostics is None
        else tuple(Diagnostics.from_json(d) for d in diagnostics),
        model=str(body["model"]),
        version=int(body["version"]),
        provider=str(body["provider"]),
        request_id=str(body["request_id"]),
        **task,
    )
