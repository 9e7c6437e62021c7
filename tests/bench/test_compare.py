"""python -m bench.compare's parts: hey's summary, /proc, ratios, targets, bodies, py-spy stacks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import compare_render, compare_report, hey, procstat
from bench.bodies import BY_NAME, answer_arrays, parse_v2, write_v2_body

SUMMARY = """
Summary:
  Total:\t2.0000 secs
  Slowest:\t0.0500 secs
  Fastest:\t0.0010 secs
  Average:\t0.0100 secs
  Requests/sec:\t105.0000

Latency distribution:
  10% in 0.0020 secs
  50% in 0.0080 secs
  90% in 0.0200 secs
  99% in 0.0400 secs

Details (average, fastest, slowest):
  DNS+dialup:\t0.0002 secs, 0.0010 secs, 0.0500 secs

Status code distribution:
  [200]\t200 responses
  [429]\t7 responses

Error distribution:
  [3]\tPost "http://127.0.0.1:1/pool": context deadline exceeded (Client.Timeout exceeded)
"""


def test_parse_summary_counts_statuses_and_transport_errors() -> None:
    r = hey.parse_summary(SUMMARY)
    assert r.statuses == {200: 200, 429: 7} and r.ok == 200
    assert r.errors == {
        'Post "http://127.0.0.1:1/pool": context deadline exceeded (Client.Timeout exceeded)': 3
    }
    assert r.requests == 210 and r.failed == 10  # 7 non-200 answers + 3 errors
    assert r.wall_seconds == 2.0 and r.requests_per_second == pytest.approx(100.0)  # 200s only
    assert (r.p50_seconds, r.p99_seconds, r.max_seconds) == (0.008, 0.04, 0.05)


def test_parse_summary_fills_missing_percentiles_from_few_answers() -> None:
    few = SUMMARY.replace("  50% in 0.0080 secs\n", "").replace("  99% in 0.0400 secs\n", "")
    r = hey.parse_summary(few)
    assert r.p50_seconds == 0.01  # the average (hey prints p50 from 2 answers on)
    assert r.p99_seconds == 0.05  # the slowest (hey prints p99 from 100 answers on)


def test_parse_summary_of_only_errors_and_of_garbage() -> None:
    only = "Summary:\n  Total:\t1.0 secs\n  Slowest:\t0.0000 secs\n\nError distribution:\n"
    r = hey.parse_summary(only + "  [5]\tdial tcp: connection refused\n")
    assert r.ok == 0 and r.failed == 5 and math.isnan(r.p99_seconds)
    with pytest.raises(ValueError, match="no requests"):
        hey.parse_summary("Summary:\n  Total:\t1.0 secs\n")
    with pytest.raises(ValueError, match="not a hey summary"):
        hey.parse_summary("hello")


def test_parse_stat_with_a_command_name_holding_spaces_and_parentheses() -> None:
    fields = ["S", "41"] + ["0"] * 9 + [str(3 * procstat.TICKS), str(procstat.TICKS)] + ["0"] * 30
    ppid, cpu = procstat.parse_stat("1234 (my (odd) name) " + " ".join(fields))
    assert ppid == 41 and cpu == pytest.approx(4.0)


def test_parse_status_kib() -> None:
    text = "Name:\tpython\nVmHWM:\t  20480 kB\nVmRSS:\t 10240 kB\n"
    assert procstat.parse_status_kib(text, "VmHWM") == 20480
    assert procstat.parse_status_kib(text, "VmSwap") == 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_tree_usage_of_this_process_counts_cpu_and_memory() -> None:
    me = os.getpid()
    usage = procstat.TreeUsage(me)
    usage.start()
    started = procstat.cpu_seconds([me])[me]
    x = np.ones(4_000_000)  # 32 MB touched
    while procstat.cpu_seconds([me])[me] - started < 0.05:
        x = x * 1.0001
    used = usage.stop()
    assert float(used["cpu_seconds"]) >= 0.05
    assert int(used["peak_rss_bytes"]) > 32 * 2**20
    assert int(used["processes"]) >= 1 and os.getpid() in procstat.tree(os.getpid())


def run(ips: float, p99: float, **extra: float) -> dict[str, Any]:
    return {
        "requests": 100,
        "failed": 0,
        "requests_per_second": ips / 8,
        "items_per_second": ips,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "max_ms": p99 * 1.5,
        "cpu_seconds": 1.0,
        "cpu_ms_per_item": 1.0,
        "peak_rss_mib": 100.0,
    } | extra


def test_summarise_takes_medians_and_spreads() -> None:
    s = compare_report.summarise([run(100, 10), run(300, 30, failed=2), run(200, 20)])
    assert s["items_per_second"] == 200 and s["items_per_second_min"] == 100
    assert s["items_per_second_max"] == 300 and s["p99_ms"] == 20 and s["p99_ms_max"] == 30
    assert s["max_ms"] == 45 and s["failed"] == 2 and s["requests"] == 300
    assert "mean_batch_items" not in s


def test_ratio_spreads_over_both_sides_rounds() -> None:
    a = compare_report.summarise([run(300, 10), run(400, 10), run(500, 10)])
    b = compare_report.summarise([run(100, 10), run(100, 10), run(200, 10)])
    r = compare_report.ratio(a, b)
    assert (r["ratio"], r["low"], r["high"]) == (4.0, 1.5, 5.0)


def results_for(cells: dict[tuple[str, str, int, int], list[dict[str, Any]]]) -> dict[str, Any]:
    raw = {
        "wide": {
            "1": [{"ms_per_run": 5.0, "items_per_second": 200.0}],
            "8": [{"ms_per_run": 20.0, "items_per_second": 400.0}],
            "64": [{"ms_per_run": 128.0, "items_per_second": 500.0}],
        }
    }
    settings = {
        "models": ["small", "wide"],
        "items": [8],
        "concurrency": [1, 32],
        "queue_bound": 256,
        "seconds": 1.0,
        "repeats": 1,
        "timeout": 20,
        "batch_items": 64,
        "litserve_batch_timeout": 0.002,
        "triton_delay_us": 0,
    }
    machine = {
        "date": "d",
        "cpu": "c",
        "cores": 2,
        "commit": "x",
        "onnxruntime": "1",
        "hey": "h",
        "load_average_before": [0.5],
        "command": "python -m bench.compare",
    }
    peers = {"ours": {"status": "ok", "version": "0.1.0"}, "triton": {"status": "ok"}}
    return compare_report.build(machine, settings, peers, raw, cells, {}, [], {}, {})


def test_targets_are_ratios_of_measured_cells() -> None:
    cells = {}
    for model in ("small", "wide"):
        cells[("ours-npy", model, 8, 32)] = [run(360, 50)]
        cells[("ours-npy-nodiag", model, 8, 32)] = [run(400, 40)]
        cells[("naive-json", model, 8, 32)] = [run(100, 900)]
        cells[("triton-binary", model, 8, 32)] = [run(380, 30)]  # lower p99 than ours
    cells[("ours-npz", "wide", 8, 32)] = [run(500, 20)]  # binary answers: Triton's like
    cells[("ours-npy", "wide", 8, 32)] = [run(360, 50, client_cpu_seconds=0.7)]
    cells[("ours-npy", "small", 8, 1)] = [run(100, 9, failed=1)]
    targets = results_for(cells)["targets"]
    got = {t["target"]: (round(t["ratio"], 3), t["met"]) for t in targets}
    raw_same = next(t for t in targets if "raw on the same batch" in t["target"])
    assert raw_same["context"].endswith("server 1.00, hey 0.70")  # what shares the cores
    naive = [v for k, v in got.items() if k.startswith(">= 3x naive")]
    assert naive == [(3.6, True), (3.6, True)]
    triton = [v for k, v in got.items() if k.startswith("ahead of triton-binary")]
    # small: ours JSON without diagnostics stands in (more items/s but a higher p99);
    # wide: ours .npz, ahead on both
    assert triton == [(round(400 / 380, 3), False), (round(500 / 380, 3), True)]
    litserve = [k for k in got if k.startswith("ahead of litserve")]
    assert litserve == []  # no LitServe cells
    assert any("ahead of triton-binary" in k and ".npy -> .npz" in k for k in got)
    raw = [v for k, v in got.items() if k.startswith(">= 0.8x raw")]
    assert raw == [(0.9, True), (0.72, False)]  # 360 vs 400 (batch 8), vs 500 (batch 64)
    errors = [v for k, v in got.items() if k.startswith("no errors")]
    assert errors == [(1.0, False)]


def test_vs_peers_and_markdown_and_plot(tmp_path: Path) -> None:
    cells = {
        ("ours-npy", "wide", 8, 32): [run(300, 50), run(330, 55)],
        ("triton-binary", "wide", 8, 32): [run(150, 100), run(100, 120)],
        ("ours-npy", "wide", 8, 1): [run(200, 9), run(210, 9)],
    }
    results = results_for(cells)
    (vs,) = results["vs_peers"]
    assert vs["peer"] == "triton-binary" and vs["items_per_second"]["ratio"] == pytest.approx(2.52)
    assert vs["p99"]["ratio"] == pytest.approx(110 / 52.5)
    same = [r for r in results["vs_raw"] if r["concurrency"] == 32 and r["series"] == "ours-npy"]
    assert same[0]["same_batch"]["ratio"] == pytest.approx(315 / 400)
    compare_render.write(results, tmp_path, "compare")
    text = (tmp_path / "compare.md").read_text()
    assert "| ours-npy | 32 | 39.4 | 315 [300-330] | 26.2 | 52.5 [50.0-55.0] |" in text
    assert "| wide | 8 | ours-npy | 2.52x [2.00-3.30]; p99 2.10x |" in text
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "compare.json").read_text())["cells"][0]["series"] == "ours-npy"
    compare_render.rerender(tmp_path / "compare.json")  # from the JSON alone: the same report
    assert (tmp_path / "compare.md").read_text() == text


def test_v2_binary_body_and_answer_round_trip(tmp_path: Path) -> None:
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    body = write_v2_body(tmp_path, "v2binary", x)
    data = body.path.read_bytes()
    length = int(body.headers["Inference-Header-Content-Length"])
    header = json.loads(data[:length])
    assert header["inputs"][0]["shape"] == [2, 3, 4]
    assert np.array_equal(np.frombuffer(data[length:], dtype="<f4").reshape(2, 3, 4), x)
    pooled, weights = np.ones((2, 4), np.float32), np.full((2, 3), 0.5, np.float32)
    outputs = [
        {"name": n, "datatype": "FP32", "shape": list(a.shape)}
        | {"parameters": {"binary_data_size": a.nbytes}}
        for n, a in (("pooled", pooled), ("weights", weights))
    ]
    answer_header = json.dumps({"outputs": outputs}).encode()
    got = parse_v2(answer_header + pooled.tobytes() + weights.tobytes(), len(answer_header))
    assert np.array_equal(got["pooled"], pooled) and np.array_equal(got["weights"], weights)
    as_json = {"outputs": [{"name": "pooled", "shape": [1, 2], "data": [1.0, 2.0]}]}
    assert parse_v2(json.dumps(as_json).encode(), None)["pooled"].tolist() == [[1.0, 2.0]]
    assert BY_NAME["triton-binary"].binary and not BY_NAME["triton-json"].binary


def test_v2_rows_and_targets_against_triton_on_every_workload(tmp_path: Path) -> None:
    cells = {
        ("ours-v2-binary", "wide", 8, 1): [run(200, 8)],
        ("triton-binary", "wide", 8, 1): [run(100, 10)],  # ours ahead on both
        ("ours-v2-binary", "wide", 8, 32): [run(300, 60)],
        ("triton-binary", "wide", 8, 32): [run(250, 50)],  # more items/s, a higher p99
        ("ours-v2-json", "wide", 8, 32): [run(120, 90)],
        ("triton-json", "wide", 8, 32): [run(100, 100)],
        ("ours-v2-binary", "small", 8, 32): [run(300, 60)],  # no Triton cell: no row
    }
    results = results_for(cells)
    rows = {(r["ours"], r["concurrency"]): r for r in results["v2_vs_triton"]}
    assert set(rows) == {("ours-v2-binary", 1), ("ours-v2-binary", 32), ("ours-v2-json", 32)}
    assert rows[("ours-v2-binary", 1)]["ahead"] and not rows[("ours-v2-binary", 32)]["ahead"]
    assert rows[("ours-v2-binary", 32)]["p99"]["ratio"] == pytest.approx(50 / 60)
    v2 = [t for t in results["targets"] if "same v2 binary bodies" in t["target"]]
    assert [(t["target"].split(", ")[2], t["met"]) for t in v2] == [("c=1", True), ("c=32", False)]
    compare_render.write(results, tmp_path, "compare")
    text = (tmp_path / "compare.md").read_text()
    assert (
        "| wide | 8 | 32 | binary | 300 | 250 | 1.20x [1.20-1.20] | 60.0 | 50.0 | 0.83x | no |"
        in text
    )
    assert (
        "| wide | 8 | 32 | JSON | 120 | 100 | 1.20x [1.20-1.20] | 90.0 | 100.0 | 1.11x | yes |"
        in text
    )


def test_our_v2_answer_reads_as_head_mean_weights(tmp_path: Path) -> None:
    pooled = np.ones((2, 4), np.float32)
    weights = np.stack([np.full((2, 3), 0.2), np.full((2, 3), 0.4)], axis=1).astype(np.float32)
    outputs = [
        {"name": n, "datatype": "FP32", "shape": list(a.shape)}
        | {"parameters": {"binary_data_size": a.nbytes}}
        for n, a in (("pooled", pooled), ("weights", weights))
    ]
    header = json.dumps({"outputs": outputs}).encode()
    body = header + pooled.tobytes() + weights.tobytes()
    got = answer_arrays(
        BY_NAME["ours-v2-binary"], body, {"inference-header-content-length": str(len(header))}
    )
    assert got["weights"].shape == (2, 3) and np.allclose(got["weights"], 0.3)
    assert "diagnostics" not in got
    x = np.zeros((1, 2, 3), np.float32)
    asked = json.loads(write_v2_body(tmp_path, "v2json", x).path.read_bytes())["outputs"]
    assert asked == [{"name": "pooled"}, {"name": "weights"}]  # no diagnostics for either server
