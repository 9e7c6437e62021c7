"""What the client sends for each input form (no server): padding, lengths, masks, float16."""

from __future__ import annotations

import io

import numpy as np
import pytest
from adapool_client._inputs import prepare
from adapool_client._wire import NPY, PoolOptions, pool_request, read_npy

RNG = np.random.default_rng(0)


def test_ragged_list_is_padded_with_zeros_and_its_lengths() -> None:
    items = [RNG.standard_normal((n, 4)) for n in (3, 1, 5)]
    p = prepare(items)
    assert p.embeddings.shape == (3, 5, 4) and p.embeddings.dtype == np.float32
    assert p.lengths.tolist() == [3, 1, 5] and p.mask is None
    for i, item in enumerate(items):
        np.testing.assert_array_equal(p.embeddings[i, : len(item)], item.astype(np.float32))
        assert not p.embeddings[i, len(item) :].any()


def test_one_set_is_a_batch_of_one_and_a_padded_batch_keeps_its_lengths() -> None:
    one = prepare(RNG.standard_normal((7, 4)))
    assert one.embeddings.shape == (1, 7, 4) and one.lengths.tolist() == [7]
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    padded = prepare(x, lengths=[6, 2])
    assert padded.lengths.tolist() == [6, 2]
    assert padded.embeddings is x or np.shares_memory(padded.embeddings, x)  # no copy


def test_a_prefix_mask_becomes_lengths_and_a_mask_with_holes_goes_as_json() -> None:
    x = RNG.standard_normal((2, 5, 4))
    prefix = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    p = prepare(x, attention_mask=prefix)
    assert p.lengths.tolist() == [3, 5] and p.mask is None
    holes = np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=bool)
    x[0, 0] = np.nan  # hidden: must not reach the wire
    p = prepare(x, attention_mask=holes)
    assert p.lengths.tolist() == [4, 1]  # up to each item's last real token
    assert p.mask is not None and p.mask.tolist() == holes[:, :4].tolist()
    assert np.isfinite(p.embeddings).all()
    request = pool_request(p, PoolOptions(), None)
    assert request.headers["Content-Type"] == "application/json"
    assert b'"attention_mask": [[false, true, false, true], [true]]' in request.content


def test_the_default_request_is_npy_with_x_lengths_byte_for_byte_what_numpy_reads() -> None:
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    request = pool_request(prepare(x, lengths=[6, 2]), PoolOptions(), "abc")
    assert request.headers["Content-Type"] == NPY
    assert request.headers["X-Lengths"] == "6,2"
    assert request.headers["Accept"] == "application/x-npz"
    assert request.headers["X-Request-Id"] == "abc"
    assert request.params == {}  # the options shape only JSON answers
    buffer = io.BytesIO()
    np.save(buffer, x)
    assert request.content == buffer.getvalue()
    np.testing.assert_array_equal(read_npy(request.content), x)


def test_float16_upload_halves_the_body_and_refuses_values_it_cannot_hold() -> None:
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    p = prepare(x, dtype="float16")
    assert p.embeddings.dtype == np.float16
    assert len(pool_request(p, PoolOptions(), None).content) == 128 + x.size * 2
    x[1, 2, 0] = 1e6
    with pytest.raises(ValueError, match=r"embeddings\[1\]: .*float16"):
        prepare(x, dtype="float16")
    prepare(x, lengths=[6, 2], dtype="float16")  # in the padding: never read


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([],), ValueError, r"no items"),
        (([np.ones((3, 4)), np.ones((2, 5))],), ValueError, r"embeddings\[1\]: token dim 5"),
        (([np.ones((3, 4)), np.ones((0, 4))],), ValueError, r"embeddings\[1\]: .*no tokens"),
        (([np.ones((3, 4)), np.ones(4)],), ValueError, r"embeddings\[1\]: .*\[N, D\]"),
        ((np.ones((2, 3, 4, 5)),), ValueError, r"must be \[B, N, D\]"),
        ((np.array([["a"]]),), TypeError, r"needs numbers"),
        ((np.ones((2, 3, 4)), [3]), ValueError, r"lengths: must be 2 integers"),
        ((np.ones((2, 3, 4)), [3.0, 1.0]), ValueError, r"lengths: must be 2 integers"),
    ],
)
def test_inputs_that_cannot_make_a_request_raise_naming_the_item(
    args: tuple[object, ...], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        prepare(*args)  # type: ignore[arg-type]


def test_masks_and_lengths_are_checked() -> None:
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match="not both"):
        prepare(x, lengths=[3, 3], attention_mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match=r"attention_mask\[1\]: the item has no real token"):
        prepare(x, attention_mask=np.array([[1, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"attention_mask: must be \[B, N\] = \[2, 3\]"):
        prepare(x, attention_mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="True/False or 0/1"):
        prepare(x, attention_mask=np.full((2, 3), 2))
    with pytest.raises(ValueError, match="a list of"):
        prepare([np.ones((3, 4))], lengths=[3])
    with pytest.raises(ValueError, match="upload_dtype"):
        prepare(x, dtype="float64")  # type: ignore[arg-type]
