"""Client.pool and pool_many against the real server: every input form and answer format equals
ONNX Runtime on the model file, item by item."""

from __future__ import annotations

import logging

import adapool_client as ac
import httpx
import numpy as np
import pytest

from service.core.diagnostics import describe, summarise
from tests.client.conftest import DEFAULT, D, ragged, reference

ATOL = 1e-5  # batched against alone (tests/service: the same bound)


def check(result: ac.PoolResult, items: list[np.ndarray], model: str, weights: str) -> None:
    assert result.model == model and result.version == 1
    assert result.provider == "CPUExecutionProvider" and result.request_id
    assert result.pooled.dtype == np.float32 and len(result) == len(items)
    assert result.lengths.tolist() == [len(x) for x in items]
    for i, x in enumerate(items):
        pooled, w = reference(model, x)
        np.testing.assert_allclose(result.pooled[i], pooled, atol=ATOL)
        if weights == "none":
            assert result.weights is None
            continue
        assert result.weights is not None
        want = w.mean(axis=0) if weights == "mean" else w
        assert result.weights[i].shape == want.shape  # trimmed to the item's own tokens
        np.testing.assert_allclose(result.weights[i], want, atol=ATOL)


@pytest.mark.parametrize(
    ("response_format", "weights"),
    [
        ("auto", "mean"),
        ("auto", "heads"),
        ("auto", "none"),
        ("npz", "mean"),
        ("npz", "none"),
        ("npy", "none"),
        ("json", "mean"),
        ("json", "heads"),
        ("json", "none"),
    ],
)
def test_ragged_items_in_every_answer_format_equal_onnxruntime(
    url: str, response_format: ac._wire.ResponseFormat, weights: ac._wire.WeightsMode
) -> None:
    items = ragged(1, [1, 37, 128, 5])
    with ac.Client(url) as client:
        result = client.pool(items, weights=weights, response_format=response_format)
    check(result, items, DEFAULT, weights)
    assert result.diagnostics is None
    assert result.label is None and result.probabilities is None and result.prediction is None


@pytest.mark.parametrize("model", ["knn-adapool-ego", "knn-cls", "knn-max", "knn-avg"])
def test_padded_batches_with_lengths_and_prefix_masks_equal_onnxruntime(
    url: str, model: str
) -> None:
    items = ragged(2, [20, 3, 64])
    x = np.full((3, 64, D), np.nan, dtype=np.float32)  # padding is never read, NaN included
    for i, item in enumerate(items):
        x[i, : len(item)] = item
    lengths = [len(item) for item in items]
    mask = np.arange(64)[None] < np.array(lengths)[:, None]
    with ac.Client(url) as client:
        check(client.pool(x, lengths=lengths, model=model), items, model, "mean")
        check(
            client.pool(x, attention_mask=mask, model=model, weights="heads"), items, model, "heads"
        )
        one = client.pool(items[0], model=model, version=1)  # one [N, D] set
        check(one, items[:1], model, "mean")


def test_a_mask_with_holes_equals_onnxruntime_with_that_mask(url: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, D)).astype(np.float32)
    mask = np.ones((2, 12), dtype=bool)
    mask[0, [0, 1, 5]] = False  # left padding and a hole
    mask[1, 7:] = False  # a prefix: the same request carries both
    x[0, 5] = np.inf  # hidden
    with ac.Client(url) as client:
        for fmt in ("npz", "json"):
            result = client.pool(x, attention_mask=mask, response_format=fmt)  # type: ignore[arg-type]
            assert result.lengths.tolist() == [12, 7]
            for i, n in enumerate((12, 7)):
                pooled, w = reference(DEFAULT, x[i, :n], mask[i, :n])
                np.testing.assert_allclose(result.pooled[i], pooled, atol=ATOL)
                assert result.weights is not None
                np.testing.assert_allclose(result.weights[i], w.mean(axis=0), atol=ATOL)
            assert result.weights is not None and not result.weights[0][[0, 1, 5]].any()


def test_float16_upload_equals_onnxruntime_on_the_rounded_input(url: str) -> None:
    items = ragged(4, [9, 100])
    with ac.Client(url, upload_dtype="float16") as client:
        result = client.pool(items)
        full = client.pool(items, upload_dtype="float32")
    rounded = [x.astype(np.float16).astype(np.float32) for x in items]
    check(result, rounded, DEFAULT, "mean")
    assert not np.array_equal(result.pooled, full.pooled)  # it really was rounded


def test_diagnostics_are_the_servers_own_as_typed_records(url: str) -> None:
    items = ragged(5, [8, 64, 1])
    with ac.Client(url) as client:
        result = client.pool(items, diagnostics=True, top_k=3, request_id="client-diag")
    assert result.request_id == "client-diag" and result.diagnostics is not None
    for i, x in enumerate(items):
        _, w = reference(DEFAULT, x)
        (want,) = describe(summarise(w[None], np.ones((1, len(x)), bool)), 3)
        got = result.diagnostics[i]
        assert isinstance(got, ac.Diagnostics)
        assert got.max_token == want["max_token"]
        assert got.signal_tokens == tuple(want["signal_tokens"])
        assert [t.token for t in got.top_tokens] == [t["token"] for t in want["top_tokens"]]
        assert len(got.top_tokens) == min(3, len(x))
        assert got.entropy == pytest.approx(want["entropy"], abs=1e-5)
        assert got.noise_mass == pytest.approx(want["noise_mass"], abs=1e-5)
        assert got.estimated_snr == pytest.approx(want["estimated_snr"])
    assert result.diagnostics[2].normalized_entropy is None  # one token
    assert result[0].diagnostics is result.diagnostics[0]


def test_pool_many_yields_every_item_in_input_order_within_the_servers_limits(
    url: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(6)
    lengths = rng.integers(1, 300, size=300).tolist()
    items = ragged(6, lengths)
    with ac.Client(url) as client, caplog.at_level(logging.DEBUG, "httpcore.connection"):
        # a generator: no len(), read lazily; 64 items x up to 300 tokens would pass 32,768
        # padded tokens only if the planner ignored the server's limit (read from /info)
        stream = client.pool_many((x for x in items), batch_size=200, concurrency=4, progress=True)
        out = list(stream)
    assert [o.length for o in out] == lengths
    assert "300item" in capsys.readouterr().err  # tqdm's bar (no total: a generator)
    for x, o in zip(items[::17], out[::17], strict=True):
        pooled, w = reference(DEFAULT, x)
        np.testing.assert_allclose(o.pooled, pooled, atol=ATOL)
        np.testing.assert_allclose(o.weights, w.mean(axis=0), atol=ATOL)  # type: ignore[arg-type]
    connects = [r for r in caplog.records if "connect_tcp.started" in r.getMessage()]
    assert 1 <= len(connects) <= 4 + 1  # kept alive: one per worker thread (and /info's)


def test_pool_many_names_the_item_of_the_whole_input_that_failed(url: str) -> None:
    items = ragged(7, [10] * 50)
    items[37][3, 2] = np.nan
    with ac.Client(url) as client:
        with pytest.raises(ac.InvalidInputError) as caught:
            list(client.pool_many(items, batch_size=8, concurrency=2))
        assert caught.value.item == 37 and caught.value.request_item == 5
        assert caught.value.field == "body" and "item 37 of the input" in str(caught.value)
        with pytest.raises(ValueError, match=r"items\[2\]: token dim 3"):
            list(client.pool_many([items[0], items[1], np.ones((4, 3))], max_batch_tokens=100))


def test_connections_are_reused(url: str, caplog: pytest.LogCaptureFixture) -> None:
    items = ragged(8, [16])
    with ac.Client(url) as client, caplog.at_level(logging.DEBUG, "httpcore.connection"):
        for _ in range(30):
            client.pool(items)
    connects = [r for r in caplog.records if "connect_tcp.started" in r.getMessage()]
    assert len(connects) == 1


def test_metadata_methods_read_the_servers_answers(url: str) -> None:
    raw = httpx.Client(base_url=url)
    with ac.Client(url) as client:
        assert client.live() is True
        ready = client.ready()
        assert ready and ready.problems == ()
        models = client.models()
        listed = raw.get("/models").json()
        assert models.default == listed["default"] == DEFAULT
        assert models.names == tuple(m["name"] for m in listed["models"])
        assert models[DEFAULT].latest.heads == 2 and models[DEFAULT].versions == (1,)
        with pytest.raises(KeyError, match="not served"):
            models["nope"]
        (version,) = client.model("knn-cls").versions
        want = raw.get("/models/knn-cls").json()["versions"][0]
        assert (version.name, version.input_dim, version.output_dim) == ("knn-cls", 16, 16)
        assert version.sha256 == want["sha256"] and version.pooling == want["pooling"]
        assert version.ready and version.provider == "CPUExecutionProvider"
        assert version.task == ac.Task("pool") and want["task"]["kind"] == "pool"
        assert version.outputs == tuple(want["outputs"]) and version.precision == want["precision"]
        info = client.info()
        want_info = raw.get("/info").json()
        assert info.default_model == DEFAULT and info.signal_rule == want_info["signal_rule"]
        assert info.limits.max_items_per_request == want_info["limits"]["max_items_per_request"]
        assert info.onnxruntime_version == want_info["onnxruntime"]["version"]
        assert info.raw["service"]["name"] == "adapool-serve"


def test_stopping_pool_many_early_cancels_the_rest_and_the_client_goes_on(url: str) -> None:
    items = ragged(9, [12] * 400)
    with ac.Client(url) as client:
        stream = client.pool_many(items, batch_size=4, concurrency=2)
        first = [next(stream) for _ in range(3)]
        stream.close()  # cancels the queued requests, waits for the ones in flight
        assert [o.length for o in first] == [12, 12, 12]
        np.testing.assert_allclose(first[2].pooled, reference(DEFAULT, items[2])[0], atol=ATOL)
        assert client.pool(items[:1]).pooled.shape[0] == 1
