"""AsyncClient against the real server: the same methods, many calls at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import adapool_client as ac
import numpy as np
import pytest

from tests.client.conftest import DEFAULT, ragged, reference
from tests.reliability.common import manifest

MODELS = (DEFAULT, "knn-adapool-mean", "knn-cls", "knn-max")


def test_many_concurrent_calls_each_get_their_own_answer(url: str) -> None:
    """64 pool calls in flight at once on one client (the server batches them together), each
    with its own items, model and format: every answer equals ONNX Runtime on its items."""
    rng = np.random.default_rng(12)
    calls = [
        (
            ragged(100 + i, rng.integers(1, 200, size=int(rng.integers(1, 5))).tolist()),
            MODELS[i % 4],
        )
        for i in range(64)
    ]

    async def run() -> list[ac.PoolResult]:
        async with ac.AsyncClient(url) as client:
            return await asyncio.gather(
                *(
                    client.pool(items, model=model, diagnostics=i % 3 == 0, request_id=f"a{i}")
                    for i, (items, model) in enumerate(calls)
                )
            )

    results = asyncio.run(run())
    for i, ((items, model), result) in enumerate(zip(calls, results, strict=True)):
        assert (result.model, result.request_id) == (model, f"a{i}")
        assert (result.diagnostics is not None) == (i % 3 == 0)
        for j, x in enumerate(items):
            pooled, w = reference(model, x)
            np.testing.assert_allclose(result.pooled[j], pooled, atol=1e-5)
            assert result.weights is not None
            np.testing.assert_allclose(result.weights[j], w.mean(axis=0), atol=1e-5)


def test_async_pool_many_reads_an_async_iterable_in_order(url: str) -> None:
    lengths = np.random.default_rng(13).integers(1, 150, size=200).tolist()
    items = ragged(13, lengths)

    async def stream() -> AsyncIterator[np.ndarray]:
        for x in items:
            await asyncio.sleep(0)
            yield x

    async def run() -> tuple[list[ac.PooledItem], list[ac.PooledItem]]:
        async with ac.AsyncClient(url) as client:
            streamed = [o async for o in client.pool_many(stream(), batch_size=7, concurrency=8)]
            listed = [o async for o in client.pool_many(items, batch_size=64, weights="none")]
            return streamed, listed

    streamed, listed = asyncio.run(run())
    assert [o.length for o in streamed] == [o.length for o in listed] == lengths
    for x, a, b in zip(items, streamed, listed, strict=True):
        pooled = reference(DEFAULT, x)[0]
        np.testing.assert_allclose(a.pooled, pooled, atol=1e-5)
        np.testing.assert_allclose(b.pooled, pooled, atol=1e-5)
        assert b.weights is None


def test_async_metadata_methods(url: str) -> None:
    async def run() -> None:
        async with ac.AsyncClient(url) as client:
            assert await client.live()
            assert await client.ready() and await client.wait_ready(timeout=5)
            models = await client.models()
            assert models.default == DEFAULT and "knn-cls" in models.names
            (version,) = (await client.model("knn-cls")).versions
            assert version.heads == manifest("knn-cls")["heads"]
            assert (await client.info()).default_model == DEFAULT
            with pytest.raises(ac.NotFoundError):
                await client.model("nope")

    asyncio.run(run())


def test_a_large_batch_is_encoded_and_decoded_off_the_loop_and_still_exact(url: str) -> None:
    """[9, 2048, 16] float32 is over 1 MiB: encoded and decoded in a worker thread."""
    items = ragged(14, [2048] * 8 + [7])
    assert sum(x.nbytes for x in items) > ac._async_client.OFFLOAD_BYTES

    async def run() -> ac.PoolResult:
        async with ac.AsyncClient(url) as client:
            return await client.pool(items, weights="heads")

    result = asyncio.run(run())
    assert result.weights is not None
    for i in (0, 8):
        pooled, w = reference(DEFAULT, items[i])
        np.testing.assert_allclose(result.pooled[i], pooled, atol=1e-5)
        np.testing.assert_allclose(result.weights[i], w, atol=1e-5)
