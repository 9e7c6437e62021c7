"""make bench's parts: hey's CSV, the four request bodies, and hey against the real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import hey
from bench.serve import FORMATS, check_body, markdown, targets, write_body
from tests.bench.conftest import needs_hey
from tests.service.server import running_server

CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
0.0100,0.0007,0.0000,0.0001,0.0020,0.0002,200,0.0000
0.0200,0.0010,0.0000,0.0001,0.0025,0.0002,200,0.0050
0.0300,0.0009,0.0000,0.0001,0.0011,0.0001,429,0.0100
0.0400,0.0002,0.0000,0.0001,0.0015,0.0001,200,0.9600
"""


def test_parse_csv() -> None:
    r = hey.parse_csv(CSV)
    assert r.requests == 4 and r.statuses == {200: 3, 429: 1} and r.ok == 3
    assert r.wall_seconds == pytest.approx(1.0)  # first start 0.0, last end 0.96 + 0.04
    assert r.requests_per_second == pytest.approx(3.0)  # only 200s count
    assert r.p50_seconds == pytest.approx(0.025)
    assert 0.039 < r.p99_seconds <= 0.04


def test_parse_csv_without_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="no requests"):
        hey.parse_csv(CSV.splitlines()[0])


def test_targets_are_ratios_of_measured_figures() -> None:
    cell = {"items_per_second": 100.0}
    raw = {
        "8": {"batch": 8.0, "items_per_second": 200.0},
        "64": {"batch": 64.0, "items_per_second": 150.0},
    }
    results = {
        "raw_onnxruntime": {"knn-wide384": raw},
        "serve": {
            "knn-wide384": {
                "npy": {
                    "1": {"items_per_second": 90.0, "p50_ms": 1.0},
                    "32": {"items_per_second": 170.0, "p50_ms": 2.0, "mean_batch_items": 8.0},
                },
                "json": {
                    "1": {"items_per_second": 10.0, "p50_ms": 9.0},
                    "32": {"items_per_second": 20.0, "p50_ms": 30.0},
                },
            }
        },
        "batching": {"m": {"batched": {"items_per_second": 300.0}, "unbatched": cell}},
        "policy": {
            "knn-wide384": {
                "measured": {"items_per_second": 170.0, "mean_batch_items": 8.0},
                "off": {"items_per_second": 140.0, "mean_batch_items": 62.0},
            }
        },
    }
    got = [(round(t["ratio"], 2), t["met"]) for t in targets(results)]
    # npy vs raw ORT's best batch at c=32; policy on vs off; npy vs JSON at c=1 and c=32;
    # batched vs unbatched
    assert got == [(0.85, True), (1.21, True), (9.0, False), (8.5, False), (3.0, True)]
    assert "200 items/s at batch 8" in targets(results)[0]["context"]


@needs_hey
def test_every_format_and_hey_against_the_real_server(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(3, 20, 16)).astype(np.float32)
    with running_server() as url:
        endpoint = f"{url}/pool"
        bodies = [write_body(tmp_path, fmt, x) for fmt in FORMATS]
        for body in bodies:
            check_body(endpoint, body, items=3)  # raises unless 200 with 3 pooled vectors
        npy = bodies[FORMATS.index("npy")]
        result = hey.run(endpoint, npy.path, npy.content_type, npy.headers, 2, 0.5)
    assert result.requests > 0 and result.statuses == {200: result.requests}
    assert 0 < result.p50_seconds <= result.p99_seconds


def test_markdown_renders_a_result() -> None:
    r = {
        "requests": 10,
        "statuses": {"200": 9, "429": 1},
        "requests_per_second": 9.0,
        "items_per_second": 72.0,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "body_bytes": 2048,
        "mean_batch_items": 8.0,
    }
    results = {
        "machine": {
            "date": "d",
            "cpu": "c",
            "cores": 2,
            "commit": "x",
            "onnxruntime": "1",
            "hey": "h",
            "load_average_before": [0.0],
            "command": "python -m bench.serve",
        },
        "raw_onnxruntime": {"m": {"8": {"batch": 8.0, "ms_per_run": 1.0, "items_per_second": 8e3}}},
        "serve": {"m": {"npy": {"32": r}}},
        "batching": {"m": {"batched": r, "unbatched": r}},
        "settings": {"": {"1": r}},
        "targets": [{"target": "t", "ratio": 1.0, "met": False}],
    }
    text = markdown(results)
    assert "| m | npy | 2 KiB | 32 | 9.0 | 72 | 1.0 | 2.0 | 8.0 | 1 |" in text
    assert "| t | 1.00x | no |" in text
