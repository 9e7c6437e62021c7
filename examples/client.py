"""A tour of the Python client (adapool_client) against a running AdaPool Serve (make run).

.venv/bin/python examples/client.py [http://127.0.0.1:8000]
"""

from __future__ import annotations

import asyncio
import sys

import numpy as np
from adapool_client import AsyncClient, Client, InvalidInputError

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
rng = np.random.default_rng(0)
a = rng.standard_normal((128, 16), dtype=np.float32)  # one set: 128 tokens of dim 16
b = rng.standard_normal((40, 16), dtype=np.float32)  # another: 40 tokens

with Client(url) as client:
    models = client.models()
    print("models ", models.default, "(default) of", len(models.names))

    # Ragged sets in, .npy up, .npz back: pooled vectors and per-item head-mean weights.
    result = client.pool([a, b])
    assert result.weights is not None
    print("pool   ", result.model, result.version, result.pooled.shape, result.provider)
    print(
        "       ",
        "weights",
        [w.shape for w in result.weights],
        "sum",
        round(float(result.weights[1].sum()), 4),
    )

    # The same as one padded [B, N, D] array with lengths, per-head weights.
    x = np.zeros((2, 128, 16), dtype=np.float32)
    x[0], x[1, :40] = a, b
    heads = client.pool(x, lengths=[128, 40], weights="heads")
    assert heads.weights is not None
    print("padded ", np.abs(heads.pooled - result.pooled).max() < 1e-5, heads.weights[1].shape)

    # Diagnostics come in the JSON answer: which tokens the pool relied on.
    d = client.pool([b], diagnostics=True, top_k=3).diagnostics
    assert d is not None
    print("diag   ", [t.token for t in d[0].top_tokens], "signal", list(d[0].signal_tokens))
    print("        effective_tokens", round(d[0].effective_tokens, 2), "of", len(b))

    # A data set, streamed: requests of up to 32 sets, 4 in flight, results in input order.
    sets = (rng.standard_normal((int(n), 16)) for n in rng.integers(1, 200, size=1000))
    pooled = np.stack([item.pooled for item in client.pool_many(sets, batch_size=32)])
    print("many   ", pooled.shape)

    # Errors name the field and the item.
    bad = b.copy()
    bad[3, 0] = np.nan
    try:
        client.pool([a, bad])
    except InvalidInputError as exc:
        print("error  ", exc.status, exc.type, exc.field, exc.item, exc.message)


async def main() -> None:
    """The same methods on asyncio: 16 calls in flight on one connection pool."""
    async with AsyncClient(url) as client:
        results = await asyncio.gather(*(client.pool([a[:n]]) for n in range(1, 17)))
        print("async  ", len(results), "results", results[-1].pooled.shape)


asyncio.run(main())
