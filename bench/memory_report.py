"""The tables of ``python -m bench.memory`` (``memory.md``), from its results."""

from __future__ import annotations

import statistics
from typing import Any

PROBE_LIMIT_MIB = 1536  # issue 15: the probe leaves the server at 1.5 GiB or less


def _ratio(after: float, before: float) -> str:
    return f"{after / before:.2f}x" if before else "-"


def model_runs(rows: list[dict[str, Any]]) -> list[str]:
    sides = [k for k in ("before", "raw onnxruntime", "after") if rows and k in rows[0]]
    head = "| model | tokens | batch | padded tokens |"
    rule = "|---|---:|---:|---:|"
    for side in sides:
        head += f" {side}: peak | kept | ms |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    for row in rows:
        padded = row["tokens"] * row["batch"]
        line = f"| {row['model']} | {row['tokens']:,} | {row['batch']} | {padded:,} |"
        for side in sides:
            cell = row[side]
            peak = cell["peak_mib"] - cell["loaded_mib"]
            kept = cell["rss_after_mib"] - cell["loaded_mib"]
            line += f" {peak:,.0f} | {kept:,.0f} | {cell['ms_per_run']:,.1f} |"
        lines.append(line)
    return lines


def per_token(rows: list[dict[str, Any]]) -> list[str]:
    """KiB of peak per padded token in the batcher's largest runs: flat = linear in tokens."""
    sides = [k for k in ("before", "after") if rows and k in rows[0]]
    lines = ["| model | run | " + " | ".join(f"{s}: KiB per token" for s in sides) + " |"]
    lines.append("|---|---|" + "---:|" * len(sides))
    largest = {}
    for row in rows:
        largest[(row["model"], row["tokens"])] = row  # the last batch is the largest run
    for (model, tokens), row in largest.items():
        cells = []
        for side in sides:
            cell = row[side]
            cells.append(
                f"{(cell['peak_mib'] - cell['loaded_mib']) * 1024 / (row['batch'] * tokens):,.1f}"
            )
        lines.append(f"| {model} | {row['batch']} x {tokens:,} | " + " | ".join(cells) + " |")
    return lines


def server(cells: dict[str, Any]) -> list[str]:
    lines = ["| side | model | request | peak RSS MiB | RSS after MiB |", "|---|---|---|---:|---:|"]
    for key, run in cells.items():
        side, model, _ = key.split("|")
        lines.append(f"| {side} | {model} | (started) | | {run['rss_start_mib']:,.0f} |")
        for r in run["requests"]:
            figures = f"{r['peak_mib']:,.0f} | {r['rss_after_mib']:,.0f}"
            lines.append(f"| {side} | {model} | {r['label']} | {figures} |")
    return lines


ROUND_TOLERANCE_MIB = 8  # "the second round not raising it": within a few pages


def probe(runs: dict[str, Any]) -> list[str]:
    lines = [
        "| side | started | after round 1 | after round 2 | round 2 - round 1 | peak | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    details = []
    for side, run in runs.items():
        ends = {}
        for r in run["requests"]:
            ends[r["label"]] = r["rss_after_mib"]  # the last request of each round
        first, second = ends["round 1"], ends["round 2"]
        met = run["peak_mib"] <= PROBE_LIMIT_MIB and second - first <= ROUND_TOLERANCE_MIB
        lines.append(
            f"| {side} | {run['rss_start_mib']:,.0f} | {first:,.0f} | {second:,.0f} | "
            f"{second - first:+,.0f} | {run['peak_mib']:,.0f} | {'met' if met else 'not met'} |"
        )
        steps = ", ".join(
            f"{r['label']} {r['model']} {r['rss_after_mib']:,.0f}" for r in run["requests"]
        )
        details.append(f"- {side}: RSS after each request (MiB): {steps}")
    return [*lines, "", *details]


def options(result: dict[str, Any]) -> list[str]:
    names = result["names"]
    lines = [
        "| session options | loaded MiB | probe 1 peak | after | probe 2 peak | after |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        run = result["memory"][name]
        p1, p2 = run["steps"]
        lines.append(
            f"| {name} | {run['rss_loaded_mib']:,.0f} | {p1['peak_mib']:,.0f} | "
            f"{p1['rss_after_mib']:,.0f} | {p2['peak_mib']:,.0f} | {p2['rss_after_mib']:,.0f} |"
        )
    for model, run in result["timing"].items():
        shapes = [f"{s['shape'][0]} x {s['shape'][1]}" for s in run["steps"]]
        lines += ["", f"ms per run against the first row, {model}, alternating in one process:", ""]
        lines.append("| session options | " + " | ".join(shapes) + " |")
        lines.append("|---|" + "---:|" * len(shapes))
        for i, name in enumerate(names):
            cells = []
            for step in run["steps"]:
                ms, base = step["ms_per_run"][i], step["ms_per_run"][0]
                cells.append(f"{ms:.2f} ms" if i == 0 else _ratio(ms, base))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def throughput(result: dict[str, Any]) -> list[str]:
    lines = [
        "| model | batch x tokens | before ms | after ms | after / before |",
        "|---|---|---:|---:|---:|",
    ]
    for model, run in result["model_runs"].items():
        for step in run["steps"]:
            before, after = step["ms_per_run"]
            shape = f"{step['shape'][0]} x {step['shape'][1]}"
            lines.append(
                f"| {model} | {shape} | {before:.2f} | {after:.2f} | {_ratio(after, before)} |"
            )
    lines += [
        "",
        "| in-process service (bench.inproc) | before req/s | after req/s | after / before |",
    ]
    lines.append("|---|---:|---:|---:|")
    for items, runs in result["service"].items():
        before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
        rounds = f"rounds: before {runs['before']}, after {runs['after']}"
        ratio = _ratio(after, before)
        lines.append(
            f"| [{items}, 128] .npy, c=32 ({rounds}) | {before:,.0f} | {after:,.0f} | {ratio} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, shared with other work), commit "
        f"{m['commit']}, onnxruntime {m['onnxruntime']}, load average before "
        f"{m['load_average_before']}. Command: `{m['command']}`. Sides: "
        + ", ".join(f"{k} = `{v}`" for k, v in results["sides"].items())
        + ".",
        "",
        "Model runs, a fresh process per cell (peak and kept: MiB of RSS above the process with "
        "the session loaded, the run's inputs included in the peak; ms: median per run):",
        "",
        *model_runs(results["model_runs"]),
        "",
        "Peak per padded token in the batcher's largest runs (flat: memory linear in tokens):",
        "",
        *per_token(results["model_runs"]),
        "",
        "The server (`python -m service` defaults, one model, a fresh server per block, requests "
        "in this order):",
        "",
        *server(results["server"]),
        "",
        "The probe: one 16 x 2,048-token `.npy` request to each committed model in turn, then a "
        "second round; and the same with the six requests sent at once (RSS MiB; target: peak "
        f"<= {PROBE_LIMIT_MIB:,} MiB and the second round adding at most "
        f"{ROUND_TOLERANCE_MIB} MiB):",
        "",
        *probe(results["probe"]),
        "",
        "Session options, this checkout's six committed models in one process, two probe rounds "
        "(RSS MiB):",
        "",
        *options(results["session_options"]),
    ]
    if "throughput" in results:
        lines += [
            "",
            "Throughput at 128 tokens per item, before against after (model runs alternating in "
            "one process, each with its own graph and session options; the service in process, "
            "rounds alternating):",
            "",
            *throughput(results["throughput"]),
        ]
    return "\n".join(lines) + "\n"
