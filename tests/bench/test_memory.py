"""bench.memory's parts: bench.memrun on a real model and the tables it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import memory_report
from bench.memrun import measure

MODEL = str(
    Path(__file__).parents[2] / "model_repository" / "signature-adapool" / "1" / "model.onnx"
)


def test_memrun_measures_each_session_kind_in_one_process() -> None:
    """The backend, a shared arena and a shrinking one side by side: a round-robin step times
    each, and the peak of a 16 x 2,048-token run sits above the loaded process by more than its
    input."""
    spec = {
        "models": [
            {"path": MODEL, "session": {"kind": "backend"}},
            {"path": MODEL, "session": {"kind": "plain", "arena": "shared", "mem_pattern": False}},
            {"path": MODEL, "session": {"kind": "plain", "arena": "session", "shrink": "always"}},
        ],
        "steps": [
            {"shape": [2, 128], "runs": 3},
            {"label": "long", "shape": [16, 2048], "models": [0]},
        ],
    }
    out = measure(spec)
    short, long = out["steps"]
    assert short["label"] == "2x128" and len(short["ms_per_run"]) == 3
    assert all(ms > 0 for ms in short["ms_per_run"])
    input_mib = 16 * 2048 * 16 * 4 / 2**20
    assert long["peak_mib"] - out["rss_loaded_mib"] > input_mib
    assert long["rss_after_mib"] <= long["peak_mib"]


def _run(peak: float, after: float) -> dict[str, Any]:
    return {"loaded_mib": 60.0, "peak_mib": peak, "rss_after_mib": after, "ms_per_run": 2.0}


def test_tables_state_the_probe_target_from_the_figures() -> None:
    requests = [
        {"label": "round 1", "model": "a", "rss_after_mib": 150.0},
        {"label": "round 2", "model": "a", "rss_after_mib": 152.0},
    ]
    grown = [
        {"label": "round 1", "model": "a", "rss_after_mib": 1000.0},
        {"label": "round 2", "model": "a", "rss_after_mib": 1400.0},
    ]
    step = {"peak_mib": 130.0, "rss_after_mib": 129.0, "shape": [1, 128], "ms_per_run": [1.0]}
    results = {
        "machine": {"date": "d", "cpu": "c", "cores": 2, "commit": "x", "onnxruntime": "1.32"}
        | {"load_average_before": [0.0], "command": "python -m bench.memory"},
        "sides": {"before": "/b", "after": "/a"},
        "model_runs": [
            {"model": "m", "tokens": 2048, "batch": 16}
            | {
                "before": _run(1200, 1200),
                "raw onnxruntime": _run(160, 158),
                "after": _run(124, 120),
            }
        ],
        "server": {"after|m|16": {"rss_start_mib": 100.0, "requests": []}},
        "probe": {
            "after": {"rss_start_mib": 100.0, "peak_mib": 155.0, "requests": requests},
            "before": {"rss_start_mib": 100.0, "peak_mib": 1400.0, "requests": grown},
        },
        "session_options": {
            "names": ["today", "shared"],
            "memory": {
                n: {"rss_loaded_mib": 61.0, "steps": [step, step]} for n in ("today", "shared")
            },
            "timing": {"m": {"steps": [step | {"ms_per_run": [2.0, 1.0]}]}},
        },
    }
    text = memory_report.markdown(results)
    assert "| after | 100 | 150 | 152 | +2 | 155 | met |" in text
    assert "| before | 100 | 1,000 | 1,400 | +400 | 1,400 | not met |" in text
    # 1,140 MiB over 32,768 padded tokens before, 64 after: KiB per token
    assert "| m | 16 x 2,048 | 35.6 | 2.0 |" in text
    assert "| shared | 0.50x |" in text
