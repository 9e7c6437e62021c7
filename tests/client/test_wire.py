"""The answer formats and the error body, parsed without a server."""

from __future__ import annotations

import io
import zipfile

import adapool_client as ac
import httpx
import numpy as np
import pytest
from adapool_client._errors import from_response
from adapool_client._inputs import prepare
from adapool_client._wire import (
    JSON,
    NPY,
    NPZ,
    PoolOptions,
    choose_format,
    pool_request,
    pool_result,
    read_npz,
)

from service.codecs import encode_npz

RNG = np.random.default_rng(1)


@pytest.mark.parametrize(
    ("fmt", "weights", "diagnostics", "accept"),
    [
        ("auto", "mean", False, NPZ),
        ("auto", "heads", False, NPZ),
        ("auto", "none", False, NPY),
        ("auto", "mean", True, JSON),
        ("json", "mean", False, JSON),
        ("npz", "none", False, NPZ),
        ("npy", "none", False, NPY),
    ],
)
def test_the_answer_format_follows_what_is_asked(
    fmt: ac._wire.ResponseFormat, weights: ac._wire.WeightsMode, diagnostics: bool, accept: str
) -> None:
    assert choose_format(fmt, weights, diagnostics) == accept


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(response_format="npz", diagnostics=True), "carries no diagnostics"),
        (dict(response_format="npy"), "pooled vectors only"),
        (dict(response_format="xml"), "response_format"),
        (dict(weights="all"), "weights: must be mean, heads or none"),
        (dict(version=2), "version needs a model name"),
    ],
)
def test_options_a_format_cannot_carry_are_refused_before_sending(
    options: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        PoolOptions(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("writer", ["service", "savez", "savez_compressed"])
def test_npz_reader_reads_the_servers_archives_and_numpys(writer: str) -> None:
    arrays = {
        "pooled": RNG.standard_normal((3, 5)).astype(np.float32),
        "weights": RNG.random((3, 2, 7)).astype(np.float32),
        "lengths": np.array([7, 2, 4]),
        "attention_mask": RNG.random((3, 7)) > 0.5,
    }
    if writer == "service":
        content = encode_npz(arrays)
    else:
        buffer = io.BytesIO()
        getattr(np, writer)(buffer, **arrays)
        content = buffer.getvalue()
    out = read_npz(content)
    assert set(out) == set(arrays)
    for name, array in arrays.items():
        np.testing.assert_array_equal(out[name], array)
        assert out[name].dtype == array.dtype


def test_a_corrupted_npz_is_an_error_not_wrong_numbers() -> None:
    content = bytearray(encode_npz({"pooled": np.ones((2, 3), np.float32)}))
    content[180] ^= 0xFF  # in the array data (30 + 10 + 128 bytes in): its CRC no longer matches
    with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
        read_npz(bytes(content))


def test_an_npz_answer_becomes_weights_trimmed_per_item_and_their_head_mean() -> None:
    lengths = [5, 2]
    weights = RNG.random((2, 3, 5)).astype(np.float32)
    pooled = RNG.standard_normal((2, 4)).astype(np.float32)
    body = encode_npz(
        {
            "pooled": pooled,
            "weights": weights,
            "lengths": np.array(lengths),
            "attention_mask": np.arange(5)[None] < np.array(lengths)[:, None],
        }
    )
    headers = {
        "content-type": NPZ,
        "x-model": "m",
        "x-model-version": "3",
        "x-provider": "CPUExecutionProvider",
        "x-request-id": "r1",
    }
    x = np.ones((2, 5, 4), np.float32)
    for mode in ("mean", "heads"):
        request = pool_request(prepare(x, lengths=lengths), PoolOptions(weights=mode), None)
        result = pool_result(request, httpx.Response(200, headers=headers, content=body))
        assert (result.model, result.version, result.request_id) == ("m", 3, "r1")
        np.testing.assert_array_equal(result.pooled, pooled)
        assert result.weights is not None
        for i, n in enumerate(lengths):
            want = weights[i, :, :n].mean(axis=0) if mode == "mean" else weights[i, :, :n]
            np.testing.assert_array_equal(result.weights[i], want)
        assert result.diagnostics is None and result.label is None
        assert not result.pooled.flags.writeable
        item = result[1]
        assert item.length == 2 and item.weights is result.weights[1]
        assert [i.length for i in result] == lengths and len(result) == 2


def test_an_answer_in_another_format_than_asked_is_refused() -> None:
    request = pool_request(prepare(np.ones((1, 2, 4))), PoolOptions(), None)
    wrong = httpx.Response(200, headers={"content-type": JSON}, content=b"{}")
    with pytest.raises(ValueError, match="asked for application/x-npz"):
        pool_result(request, wrong)


def test_the_error_body_becomes_the_status_class_with_field_and_item() -> None:
    body = {
        "error": {
            "type": "invalid_input",
            "message": "body[1]: contains NaN or Inf",
            "detail": {"field": "body", "item": 1},
        },
        "request_id": "abc",
    }
    exc = from_response(httpx.Response(422, json=body), attempts=1)
    assert isinstance(exc, ac.InvalidInputError)
    assert (exc.status, exc.type, exc.field, exc.item, exc.request_id) == (
        422,
        "invalid_input",
        "body",
        1,
        "abc",
    )
    assert str(exc) == "422 invalid_input: body[1]: contains NaN or Inf [request abc]"
    shifted = exc.shifted(64)
    assert (shifted.item, shifted.request_item, type(shifted)) == (65, 1, ac.InvalidInputError)
    assert "(item 65 of the input)" in str(shifted)


def test_an_answer_that_is_not_the_services_error_body_is_still_an_api_error() -> None:
    exc = from_response(httpx.Response(502, text="<html>Bad Gateway</html>"), attempts=4)
    assert isinstance(exc, ac.ServerError)
    assert (exc.status, exc.type, exc.field, exc.item) == (502, "http_error", None, None)
    assert "Bad Gateway" in exc.message and "after 4 attempts" in str(exc)
    teapot = from_response(httpx.Response(418, headers={"retry-after": "2"}))
    assert type(teapot) is ac.APIError and teapot.retry_after == 2.0
