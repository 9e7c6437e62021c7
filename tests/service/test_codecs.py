"""Decoding every request format, and the errors each bad input gets."""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import orjson
import pytest

from service import codecs
from service.api.options import Options, parse_options
from service.codecs import npy as npy_codec
from service.errors import BadRequest, InvalidInput, PayloadTooLarge

LIMITS = codecs.Limits(max_items=8, max_tokens_per_item=100, max_tokens_per_request=300)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)


def test_json_lists_ragged(x: np.ndarray) -> None:
    body = orjson.dumps({"embeddings": [x[0].tolist(), x[1, :2].tolist()], "top_k": 3})
    batch, rest = codecs.decode_json(body, LIMITS)
    assert batch.embeddings.shape == (2, 5, 4) and rest == {"top_k": 3}
    assert batch.lengths.tolist() == [5, 2]
    assert batch.attention_mask.tolist()[1] == [True, True, False, False, False]
    np.testing.assert_array_equal(batch.embeddings[1, :2], x[1, :2])
    assert (batch.embeddings[1, 2:] == 0).all()


def test_json_explicit_mask(x: np.ndarray) -> None:
    mask = [[True, False, True, True, True]] * 3
    batch, _ = codecs.decode_json(
        orjson.dumps({"embeddings": x.tolist(), "attention_mask": mask}), LIMITS
    )
    assert batch.attention_mask[:, 1].tolist() == [False] * 3 and batch.lengths.tolist() == [5] * 3


def test_base64_float16_with_lengths(x: np.ndarray) -> None:
    half = x.astype(np.float16)
    body = {
        "embeddings_b64": base64.b64encode(half.tobytes()).decode(),
        "shape": [3, 5, 4],
        "dtype": "float16",
        "lengths": [5, 1, 3],
    }
    batch, _ = codecs.decode_json(orjson.dumps(body), LIMITS)
    np.testing.assert_array_equal(batch.embeddings, half.astype(np.float32))
    assert batch.lengths.tolist() == [5, 1, 3] and batch.embeddings.dtype == np.float32


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_both_orders_and_2d(x: np.ndarray, order: str) -> None:
    batch = codecs.decode_npy(npy(np.asarray(x, order=order)), [5, 4, 1], LIMITS)
    np.testing.assert_array_equal(batch.embeddings, x)
    assert batch.lengths.tolist() == [5, 4, 1]
    single = codecs.decode_npy(npy(x[0]), None, LIMITS)
    assert single.embeddings.shape == (1, 5, 4)


def npy_with_header(header: str, data: bytes, version: int = 1) -> bytes:
    """A .npy body with a header written by hand (padded the way numpy pads it)."""
    size = 4 if version > 1 else 2
    text = header.encode("latin-1")
    pad = -(6 + 2 + size + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(text).to_bytes(size, "little") + text + data


@pytest.mark.parametrize("shape", [(3, 5, 4), (5, 4), (4,), (), (0, 5, 4)])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", "<f8", "|u1"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_header_is_read_as_numpy_reads_it(
    shape: tuple[int, ...], dtype: str, order: str
) -> None:
    body = npy(np.zeros(shape, dtype=dtype, order=order))  # type: ignore[call-overload]
    stream = io.BytesIO(body)
    np.lib.format.read_magic(stream)
    want_shape, want_fortran, want_dtype = np.lib.format.read_array_header_1_0(stream)
    assert npy_codec._npy_header(body) == (want_shape, want_fortran, want_dtype, stream.tell())


def test_npy_headers_numpy_does_not_write_are_read_by_numpy(x: np.ndarray) -> None:
    data = x.tobytes()
    reordered = "{'shape': (3, 5, 4), 'fortran_order': False, 'descr': '<f4'}"
    for body in (npy_with_header(reordered, data), npy_with_header(reordered, data, version=2)):
        batch = codecs.decode_npy(body, None, LIMITS)
        np.testing.assert_array_equal(batch.embeddings, x)
    broken = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5, 4, }"
    with pytest.raises(BadRequest, match=r"not a valid \.npy"):
        codecs.decode_npy(npy_with_header(broken, data), None, LIMITS)


def test_raw_bytes(x: np.ndarray) -> None:
    batch = codecs.decode_raw(x.tobytes(), (3, 5, 4), "float32", None, LIMITS)
    np.testing.assert_array_equal(batch.embeddings, x)


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"{not json", BadRequest, "not valid JSON"),
        (b"[1, 2]", InvalidInput, "must be a JSON object"),
        (b'{"embeddings": [], "x": 1}', InvalidInput, "non-empty list"),
        (
            b'{"embeddings": [[[1.0, 2.0]], []]}',
            InvalidInput,
            r"embeddings\[1\]: item has no tokens",
        ),
        (b'{"embeddings": [[[1.0, 2.0]], [[1.0]]]}', InvalidInput, "different dims"),
        (
            b'{"embeddings": [[[1.0, 2.0], [1.0]]]}',
            InvalidInput,
            r"embeddings\[0\]: tokens must be",
        ),
        (b'{"embeddings": [[["a", 2.0]]]}', InvalidInput, r"embeddings\[0\]"),
        (b'{"embeddings": [[[1e39, 2.0]]]}', InvalidInput, r"embeddings\[0\]: contains NaN or Inf"),
        (b'{"embeddings": [[[1.0]]], "embeddings_b64": ""}', InvalidInput, "exactly one"),
        (b'{"embeddings": [[[1.0]]], "attention_mask": [[false]]}', InvalidInput, "no real token"),
        (
            b'{"embeddings": [[[1.0]]], "attention_mask": [[1, 1]]}',
            InvalidInput,
            "must have 1 entries",
        ),
        (b'{"embeddings_b64": "AAAA", "shape": [1, 1, 2]}', InvalidInput, "does not fit 8 bytes"),
        (b'{"embeddings_b64": "AAAAAA==AAA", "shape": [1, 1, 2]}', InvalidInput, "does not fit"),
        (
            b'{"embeddings_b64": "AAAAAA=!AAA=", "shape": [1, 1, 2]}',
            InvalidInput,
            "not valid base64",
        ),
        (
            b'{"embeddings_b64": "AAAA", "shape": [1, 1, 1], "dtype": "int8"}',
            InvalidInput,
            "unsupported dtype",
        ),
        (b'{"embeddings_b64": "AAAA", "shape": "1,1"}', InvalidInput, "shape: must be a list"),
        (b'{"embeddings_b64": "AAAAAA==", "shape": [1, 0, 1]}', InvalidInput, "no tokens"),
        (b'{"embeddings": [[[1.0]]] , "embeddings_b64": null}', InvalidInput, "exactly one"),
    ],
)
def test_bad_json(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        codecs.decode_json(body, LIMITS)


def test_nan_in_padding_is_fine_but_not_in_real_tokens(x: np.ndarray) -> None:
    x = x.copy()
    x[1, 3:] = np.nan
    batch = codecs.decode_npy(npy(x), [5, 3, 5], LIMITS)
    assert batch.lengths.tolist() == [5, 3, 5]
    with pytest.raises(InvalidInput, match=r"body\[1\]: contains NaN"):
        codecs.decode_npy(npy(x), [5, 4, 5], LIMITS)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda x: b"not an npy file", BadRequest, "not a valid .npy"),
        (lambda x: npy(x.astype(np.float64)), InvalidInput, "unsupported dtype <f8"),
        (lambda x: npy(x.astype(np.int32)), InvalidInput, "unsupported dtype"),
        (lambda x: npy(np.array([{"a": 1}], dtype=object)), InvalidInput, "unsupported dtype"),
        (lambda x: npy(x)[:-4], InvalidInput, "bytes; shape"),
        (lambda x: npy(x[None]), InvalidInput, "shape must be"),
    ],
)
def test_bad_npy(x: np.ndarray, make, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        codecs.decode_npy(make(x), None, LIMITS)


def test_lengths_must_fit(x: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="has 2 entries for 3 items"):
        codecs.decode_npy(npy(x), [1, 2], LIMITS)
    with pytest.raises(InvalidInput, match=r"lengths\[2\]: must be in \[1, 5\]"):
        codecs.decode_npy(npy(x), [1, 2, 6], LIMITS)
    with pytest.raises(InvalidInput, match="comma-separated integers"):
        codecs.parse_lengths("1,x")


def test_limits_apply_before_reading_data() -> None:
    with pytest.raises(PayloadTooLarge, match="9 items exceed the limit of 8"):
        codecs.decode_raw(b"", (9, 1, 4), "float32", None, LIMITS)
    with pytest.raises(PayloadTooLarge, match="101 tokens"):
        codecs.decode_raw(b"", (1, 101, 4), "float32", None, LIMITS)
    with pytest.raises(PayloadTooLarge, match="400 padded tokens"):
        codecs.decode_raw(b"", (4, 100, 4), "float32", None, LIMITS)
    with pytest.raises(PayloadTooLarge, match="9 items"):
        codecs.decode_json(orjson.dumps({"embeddings": [[[1.0]]] * 9}), LIMITS)


def test_raw_header_errors(x: np.ndarray) -> None:
    with pytest.raises(InvalidInput, match="X-Shape: header required"):
        codecs.parse_shape(None)
    with pytest.raises(InvalidInput, match="unsupported dtype 'float64'"):
        codecs.decode_raw(x.tobytes(), (3, 5, 4), "float64", None, LIMITS)
    with pytest.raises(InvalidInput, match="has 240 bytes; shape"):
        codecs.decode_raw(x.tobytes(), (3, 5, 5), "float32", None, LIMITS)


def test_options() -> None:
    o = parse_options({"top_k": "3", "diagnostics": "false"}, {"return_weights": "heads"}, 10, 5)
    assert o == Options(return_weights="heads", diagnostics=False, top_k=3)
    assert parse_options({}, {}, 10, 5) == Options("mean", True, 5)
    with pytest.raises(InvalidInput, match="return_weights"):
        parse_options({"return_weights": "all"}, {}, 10, 5)
    with pytest.raises(InvalidInput, match=r"top_k: must be in \[0, 10\]"):
        parse_options({"top_k": "11"}, {}, 10, 5)
    with pytest.raises(InvalidInput, match="unknown keys"):
        parse_options({}, {"topk": 1}, 10, 5)


ANSWERS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.arange(6, dtype=np.float32).reshape(2, 3).T,  # Fortran order in, C order out
    np.ones((3, 2, 7), dtype=np.float32),
    np.array([7, 5, 1]),
    np.ones((2, 7), dtype=bool),
    np.zeros((0, 16), dtype=np.float32),
    np.array(3.0, dtype=np.float32),  # 0-d
    np.zeros((1, 1), dtype=">f4"),
]


@pytest.mark.parametrize("array", ANSWERS, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_npy_answers_are_what_numpy_save_writes(array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, order="C"))  # answers are always in C order
    assert codecs.encode_npy(array) == buffer.getvalue()


def test_npz_answers_are_valid_zips_that_numpy_loads() -> None:
    arrays = {f"a{i}": a for i, a in enumerate(ANSWERS)}
    body = codecs.encode_npz(arrays)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None  # every member's CRC checks out
        assert archive.namelist() == [f"{k}.npy" for k in arrays]
    with np.load(io.BytesIO(body), allow_pickle=False) as npz:
        for key, array in arrays.items():
            assert npz[key].dtype == array.dtype and npz[key].shape == array.shape
            np.testing.assert_array_equal(npz[key], array)


def test_json_values_must_be_numbers() -> None:
    """numpy would read "0.5" as 0.5 and true as 1.0: the wire says numbers, so refuse them."""
    for value in ("0.5", True, None, {"v": 1}):
        with pytest.raises(InvalidInput, match=r"embeddings\[0\]: tokens must be lists of numbers"):
            codecs.decode_json(orjson.dumps({"embeddings": [[[value] * 4]]}), LIMITS)
    batch, _ = codecs.decode_json(orjson.dumps({"embeddings": [[[1, -2, 3, 4]]]}), LIMITS)
    assert batch.embeddings.dtype == np.float32 and batch.embeddings[0, 0].tolist() == [1, -2, 3, 4]
    with pytest.raises(InvalidInput, match="shape: must be a list of integers"):
        codecs.decode_json(orjson.dumps({"embeddings_b64": "", "shape": [True, 1, 4]}), LIMITS)


def test_options_are_typed_in_a_body_and_unknown_query_keys_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"query: unknown keys \['topk'\]"):
        parse_options({"topk": "3"}, {}, 10, 5)
    for body in ({"diagnostics": "false"}, {"top_k": True}, {"top_k": 2.5}, {"top_k": "3"}):
        with pytest.raises(InvalidInput):
            parse_options({}, body, 10, 5)
    with pytest.raises(InvalidInput, match="diagnostics: must be true or false"):
        parse_options({"diagnostics": "1"}, {}, 10, 5)
    assert parse_options({"diagnostics": "False"}, {"top_k": 0}, 10, 5).top_k == 0
