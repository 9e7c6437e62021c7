"""Call a running AdaPool Serve (make run) in every request format, with httpx and numpy only.

.venv/bin/python examples/client.py [http://127.0.0.1:8000]
"""

from __future__ import annotations

import base64
import io
import sys

import httpx
import numpy as np

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"
rng = np.random.default_rng(0)
a = rng.standard_normal((128, 16)).astype(np.float32)  # one item: 128 tokens of dim 16
b = rng.standard_normal((40, 16)).astype(np.float32)  # another: 40 tokens

# 1. JSON lists; items may have different token counts.
r = httpx.post(f"{url}/pool", json={"embeddings": [a.tolist(), b.tolist()]})
print("json  ", r.status_code, r.json()["pooled"][1][:3])

# 2. JSON with base64: one padded [B, N, D] array plus each item's length.
x = np.zeros((2, 128, 16), dtype=np.float32)
x[0], x[1, :40] = a, b
body = {
    "embeddings_b64": base64.b64encode(x.tobytes()).decode(),
    "shape": [2, 128, 16],
    "dtype": "float32",
    "lengths": [128, 40],
}
print("base64", httpx.post(f"{url}/pool", json=body).json()["pooled"][1][:3])

# 3a. A .npy body; lengths in a header (or ?lengths=128,40).
buffer = io.BytesIO()
np.save(buffer, x)
r = httpx.post(
    f"{url}/pool",
    content=buffer.getvalue(),
    headers={"Content-Type": "application/x-npy", "X-Lengths": "128,40"},
)
print("npy   ", r.json()["pooled"][1][:3])

# 3b. Raw little-endian bytes, shape and dtype in headers; ask for a binary answer.
r = httpx.post(
    f"{url}/pool",
    content=x.tobytes(),
    headers={
        "Content-Type": "application/octet-stream",
        "X-Shape": "2,128,16",
        "X-Dtype": "float32",
        "X-Lengths": "128,40",
        "Accept": "application/x-npz",
    },
)
arrays = np.load(io.BytesIO(r.content))
print(
    "raw   ", arrays["pooled"][1][:3], "weights", arrays["weights"].shape, r.headers["x-provider"]
)
