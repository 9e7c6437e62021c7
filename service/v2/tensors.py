"""KServe v2 infer requests and responses as bytes: the JSON header, the binary tensor extension,
and every check that names the input at fault.

A request body is a JSON object, optionally followed by raw tensors: the header
``Inference-Header-Content-Length: N`` says that its first N bytes are the JSON, and each input
whose ``parameters.binary_data_size`` is set takes that many bytes of the rest, in the order the
inputs are listed (little-endian, row-major, BOOL one byte each). Without it, each input carries
``data``, flat or nested. Inputs are matched by name, in any order: ``embeddings`` FP32 or FP16
[B, N, D] and ``attention_mask`` BOOL [B, N] (optional: every token real).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from service.codecs.common import Limits, check_shape, finish
from service.core.calls import Batch
from service.errors import BadRequest, PayloadTooLarge

# v2 datatype -> NumPy dtype of its raw bytes (the ones this server reads or writes)
DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "BOOL": np.dtype("u1"),
}
EMBEDDINGS, MASK = "embeddings", "attention_mask"
INPUTS = {EMBEDDINGS: ("FP32", "FP16"), MASK: ("BOOL",)}


REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
TENSOR_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_KEYS = frozenset({"name", "parameters"})


def bad(message: str) -> BadRequest:
    return BadRequest(message)


def check_keys(where: str, data: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise bad(f"{where}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def check_parameters(where: str, parameters: Any) -> dict[str, Any]:
    """A ``parameters`` object: scalar values only (the protocol's InferParameter)."""
    if not isinstance(parameters, dict):
        raise bad(f"{where}: 'parameters' must be an object")
    for key, value in parameters.items():
        if not isinstance(value, bool | int | float | str):
            raise bad(f"{where}: parameter '{key}' must be a boolean, number or string")
    return parameters


@dataclass(frozen=True)
class Requested:
    """An output the client asked for, and whether it wants it as raw bytes."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    batch: Batch
    outputs: tuple[Requested, ...] | None  # None: every output
    binary_output: bool  # the request-wide default (parameters.binary_data_output)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A ``Content-Encoding: gzip`` or ``deflate`` body, inflated to at most ``limit`` bytes."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    if encoding.strip().lower() not in ("gzip", "deflate"):
        raise bad(f"Content-Encoding {encoding!r} is not supported: use gzip or deflate")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # 32: a gzip or a zlib header
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise bad(f"the body is not valid {encoding}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"the inflated body exceeds the limit of {limit} bytes", {"limit": limit}
        )
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part, by ``Inference-Header-Content-Length``."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isascii() or not text.isdigit():
        raise bad(f"Inference-Header-Content-Length must be an integer, got {text[:40]!r}")
    size = int(text)  # Python integers: no 32-bit overflow to wrap a huge value around
    if size > len(body):
        raise bad(
            f"Inference-Header-Content-Length is {size}, but the body has only {len(body)} bytes"
        )
    return body[:size], memoryview(body)[size:]


def parse_request(
    body: bytes, header_length: str | None, limits: Limits, max_values: int
) -> InferRequest:
    """The request's tensors as a :class:`Batch`, and the outputs it asks for."""
    header, binary = split_body(body, header_length)
    if header.count(b",") + 1 > max_values:
        raise PayloadTooLarge(
            f"the JSON part holds more than {max_values} values; send tensors as binary data",
            {"limit": max_values},
        )
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise bad(f"the request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise bad("the request must be a JSON object")
    check_keys("the request", request, REQUEST_KEYS)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("the request needs a non-empty 'inputs' list")
    tensors: dict[str, NDArray[Any]] = {}
    offset = 0
    for position, tensor in enumerate(inputs):
        name, array, used = _read_input(position, tensor, binary, offset)
        if name in tensors:
            raise bad(f"input '{name}' is given twice")
        tensors[name] = array
        offset += used
    if offset != len(binary):
        raise bad(
            f"the binary data holds {len(binary)} bytes but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    batch = to_batch(tensors, limits)
    parameters = check_parameters("the request", request.get("parameters", {}))
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise bad("parameter 'binary_data_output' must be true or false")
    identifier = request.get("id")
    if "id" in request and not isinstance(identifier, str):
        raise bad("'id' must be a string")
    return InferRequest(identifier, batch, _requested(request, binary_output), binary_output)


def _read_input(
    position: int, tensor: Any, binary: memoryview, offset: int
) -> tuple[str, NDArray[Any], int]:
    """One input: its name, its array in the declared shape, and the binary bytes it used."""
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise bad(f"inputs[{position}] must be an object with a 'name'")
    name = tensor["name"]
    check_keys(f"input '{name}'", tensor, TENSOR_KEYS)
    datatype, shape = check_declared(name, tensor.get("datatype"), tensor.get("shape"))
    parameters = check_parameters(f"input '{name}'", tensor.get("parameters", {}))
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise bad(f"input '{name}': binary_data_size must be an integer >= 0")
        if offset + size > len(binary):
            raise bad(f"input '{name}': its {size} binary bytes run past the end of the body")
        return name, from_raw(name, datatype, shape, binary[offset : offset + size]), size
    if "data" not in tensor:
        raise bad(f"input '{name}': no 'data' and no binary_data_size")
    return name, from_values(name, datatype, tensor["data"], shape), 0


def check_declared(name: str, datatype: Any, shape: Any) -> tuple[str, list[int]]:
    """An input this model takes, with one of its datatypes and a shape of its rank."""
    if name not in INPUTS:
        raise bad(f"unknown input '{name}': this model takes {sorted(INPUTS)}")
    if datatype not in INPUTS[name]:
        raise bad(f"input '{name}': datatype {datatype!r} is not one of {list(INPUTS[name])}")
    rank = 3 if name == EMBEDDINGS else 2
    if (
        not isinstance(shape, list)
        or len(shape) != rank
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise bad(f"input '{name}': shape must be {rank} integers >= 0, got {shape!r}")
    return datatype, shape


def from_raw(name: str, datatype: str, shape: list[int], data: bytes | memoryview) -> NDArray[Any]:
    """Raw little-endian, row-major bytes of ``shape`` (BOOL: one byte each, 0 or 1)."""
    dtype = DTYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise bad(
            f"input '{name}': {len(data)} bytes do not fit shape {shape} of {datatype} "
            f"({expected} bytes)"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if datatype == "BOOL":
        if array.size and array.max() > 1:
            raise bad(f"input '{name}': BOOL bytes must be 0 or 1")
        return array.astype(bool)
    return array


def from_values(name: str, datatype: str, data: Any, shape: list[int]) -> NDArray[Any]:
    """``data`` (flat or nested, row-major: JSON ``data`` or gRPC typed contents) as an array
    of ``shape``, its types checked."""
    count = math.prod(shape)
    if not isinstance(data, list):
        raise bad(f"input '{name}': 'data' must be a list")
    try:
        array = np.asarray(data)
    except ValueError:
        raise bad(f"input '{name}': 'data' is ragged (nested lists of different lengths)") from None
    if array.size != count:
        raise bad(f"input '{name}': 'data' has {array.size} elements, shape {shape} needs {count}")
    flat = array.reshape(-1)
    if datatype == "BOOL":
        if array.dtype != np.bool_:
            raise bad(f"input '{name}': BOOL data must be true or false, got {array.dtype.name}")
        return flat.reshape(shape)
    # numbers: numpy reads [1, true, 2.5] as floats, so bools and other types are found by type
    if array.dtype.kind not in "fiu" or any(isinstance(v, bool) for v in _leaves(data)):
        raise bad(f"input '{name}': {datatype} data must be numbers only")
    with np.errstate(over="ignore"):  # beyond float32: inf, refused with the other non-finites
        return flat.astype(DTYPES[datatype]).reshape(shape)


def _leaves(data: list[Any]) -> Any:
    for value in data:
        if isinstance(value, list):
            yield from _leaves(value)
        else:
            yield value


def to_batch(tensors: dict[str, NDArray[Any]], limits: Limits) -> Batch:
    """The inputs as the core's :class:`Batch` (the limits and the finite check applied)."""
    if EMBEDDINGS not in tensors:
        raise bad(f"input '{EMBEDDINGS}' is missing")
    return _batch(tensors[EMBEDDINGS], tensors.get(MASK), limits)


def _batch(embeddings: NDArray[Any], mask: NDArray[np.bool_] | None, limits: Limits) -> Batch:
    b, n, _ = check_shape(tuple(embeddings.shape), limits, EMBEDDINGS)
    if mask is None:
        mask = np.ones((b, n), dtype=bool)
    elif mask.shape != (b, n):
        raise bad(
            f"input '{MASK}': shape {list(mask.shape)} does not match {EMBEDDINGS}' [B, N] = "
            f"{[b, n]}"
        )
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    return finish(x, np.ascontiguousarray(mask), np.full(b, n, dtype=np.int64), EMBEDDINGS)


def _requested(request: dict[str, Any], binary_output: bool) -> tuple[Requested, ...] | None:
    if "outputs" not in request:
        return None
    outputs = request["outputs"]
    if not isinstance(outputs, list):
        raise bad("'outputs' must be a list")
    requested = []
    for position, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise bad(f"outputs[{position}] must be an object with a 'name'")
        check_keys(f"output '{output['name']}'", output, OUTPUT_KEYS)
        parameters = check_parameters(f"output '{output['name']}'", output.get("parameters", {}))
        if parameters.get("classification"):
            raise bad("the classification extension is not supported")
        binary = parameters.get("binary_data", binary_output)
        if not isinstance(binary, bool):
            raise bad(f"output '{output['name']}': binary_data must be true or false")
        requested.append(Requested(output["name"], binary))
    return tuple(requested)


def response_body(
    header: dict[str, Any], arrays: list[tuple[str, str, NDArray[Any], bool]]
) -> tuple[bytes, int | None]:
    """The response: ``(body, JSON length)`` with the raw tensors after the JSON when any output
    is binary (the length goes in Inference-Header-Content-Length), else ``(JSON, None)``.

    ``arrays``: (name, datatype, array, binary) per output, in the order to answer them.
    """
    outputs, raw = [], []
    for name, datatype, array, binary in arrays:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            data = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        outputs.append(entry)
    text = orjson.dumps(header | {"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not raw:
        return text, None
    return b"".join([text, *raw]), len(text)
