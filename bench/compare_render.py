"""``python -m bench.compare``'s output: ``compare.json``, ``compare.md`` and ``compare.png``.

    python -m bench.compare_render results/bench/compare.json

renders ``compare.md`` and ``compare.png`` again from a run's JSON (and the profile's raw stacks
beside it) with the current report code, measuring nothing: for a change to the tables, the
plot, the targets or the profile's stage rules after a run.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from bench import compare_report, pyspy
from bench.bodies import SERIES
from bench.compare_report import TARGET_CONCURRENCY, lookup
from bench.pyspy import IDLE


def _range(s: dict[str, Any], name: str, digits: int = 0) -> str:
    return f"{s[name]:,.{digits}f} [{s[f'{name}_min']:,.{digits}f}-{s[f'{name}_max']:,.{digits}f}]"


def _ratio(r: dict[str, float]) -> str:
    return f"{r['ratio']:.2f}x [{r['low']:.2f}-{r['high']:.2f}]"


def header(results: dict[str, Any]) -> list[str]:
    m, s = results["machine"], results["settings"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), commit {m['commit']}, "
        f"onnxruntime {m['onnxruntime']}, hey {m['hey']}, load average before "
        f"{m['load_average_before']}, after {m.get('load_average_after', '?')}. "
        f"Command: `{m['command']}`.",
        "",
        f"Each cell: hey for {s['seconds']} s at the given concurrency, {s['repeats']} rounds "
        "(every server restarted each round, the order rotating); figures are the median of the "
        "rounds, [min-max] where shown. Latencies at the client; `failed` counts non-200 answers "
        f"and transport errors (hey's timeout: {s['timeout']} s). Server CPU and peak RSS are of "
        "the server's whole process tree (peak RSS: the sum of its processes' peaks during the "
        "cell); hey CPU is the load generator's own (user + system), on the same cores. "
        f"Every server batches at most {s['batch_items']} items per model run and runs "
        "the same model.onnx through the same ONNX Runtime backend on CPU.",
        "",
        "| server | status | versions | settings / reason |",
        "|---|---|---|---|",
    ]
    labels = {"ours": "ours (python -m service)", "naive": "naive FastAPI"}
    for name, p in results["peers"].items():
        detail = p.get("reason", "") or json.dumps(p.get("settings", ""))
        if name == "litserve" and p["status"] == "ok":
            detail = (
                f"batch_timeout={s['litserve_batch_timeout']} s, max_batch_size=64/items "
                "(it counts requests), fast_queue, 1 inference worker"
            )
        if name == "triton" and p["status"] == "ok":
            detail = f"max_batch_size=64 items, max_queue_delay_microseconds={s['triton_delay_us']}"
        if name == "naive":
            detail = "no batching, def route (thread pool), pydantic lists"
        detail = detail.replace("\n", "<br>").replace("|", "\\|")
        lines.append(
            f"| {labels.get(name, name)} | {p['status']} | {p.get('version', '')} | {detail} |"
        )
    return lines


def raw_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Raw ONNX Runtime in process, back to back (the ceiling), measured once per round:",
        "",
        "| model | batch [B, 128, D] | ms per run | items/s [min-max] |",
        "|---|---:|---:|---:|",
    ]
    for model, batches in results["raw_onnxruntime"].items():
        for batch, r in batches.items():
            lines.append(
                f"| {model} | {batch} | {r['ms_per_run']:.2f} | {_range(r, 'items_per_second')} |"
            )
    return lines


def cell_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    workloads = sorted({(c["model"], c["items"]) for c in results["cells"]})
    for model, items in workloads:
        lines += [
            "",
            f"**{model}, [{items}, 128, D] requests:**",
            "",
            "| series | c | requests/s | items/s [min-max] | p50 ms | p99 ms [min-max] | max ms | "
            "failed | server CPU s | CPU ms/item | hey CPU s | peak RSS MiB | items/run |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cell in results["cells"]:
            if (cell["model"], cell["items"]) != (model, items):
                continue
            s = cell["summary"]
            batch = f"{s['mean_batch_items']:.1f}" if "mean_batch_items" in s else ""
            client = f"{s['client_cpu_seconds']:.2f}" if "client_cpu_seconds" in s else ""
            lines.append(
                f"| {cell['series']} | {cell['concurrency']} | {s['requests_per_second']:,.1f} | "
                f"{_range(s, 'items_per_second')} | {s['p50_ms']:.1f} | {_range(s, 'p99_ms', 1)} | "
                f"{s['max_ms']:.1f} | {s['failed']} | {s['cpu_seconds']:.2f} | "
                f"{s['cpu_ms_per_item']:.2f} | {client} | {s['peak_rss_mib']:,.0f} | {batch} |"
            )
    if results["skipped"]:
        lines += ["", "Not measured:", ""]
        for k in results["skipped"]:
            lines.append(
                f"- {k['series']} {k['model']} [{k['items']}] c={k['concurrency']}: {k['reason']}"
            )
    return lines


def ratio_tables(results: dict[str, Any]) -> list[str]:
    c = TARGET_CONCURRENCY
    peers = [s.name for s in SERIES if s.server != "ours"]
    present = [p for p in peers if any(r["peer"] == p for r in results["vs_peers"])]
    lines = [
        "",
        f"Ours against each peer at concurrency {c}: items/s ratio [range over the rounds]; "
        "p99 as the peer's over ours (above 1: ours is lower):",
        "",
        "| model | items | ours | " + " | ".join(present) + " |",
        "|---|---:|---|" + "---|" * len(present),
    ]
    rows: dict[tuple[str, int, str], dict[str, str]] = {}
    for r in results["vs_peers"]:
        if r["concurrency"] == c:
            text = f"{_ratio(r['items_per_second'])}; p99 {r['p99']['ratio']:.2f}x"
            rows.setdefault((r["model"], r["items"], r["ours"]), {})[r["peer"]] = text
    for (model, items, ours), by_peer in rows.items():
        cells = " | ".join(by_peer.get(p, "") for p in present)
        lines.append(f"| {model} | {items} | {ours} | {cells} |")
    lines += [
        "",
        "Items/s over raw ONNX Runtime's, on the request's batch size and on its best batch:",
        "",
        "| series | model | items | c | / raw, same batch | / raw, best batch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["vs_raw"]:
        if r["concurrency"] in (c, max(results["settings"]["concurrency"])):
            lines.append(
                f"| {r['series']} | {r['model']} | {r['items']} | {r['concurrency']} | "
                f"{_ratio(r['same_batch'])} | {_ratio(r['best_batch'])} |"
            )
    return lines


def v2_table(results: dict[str, Any]) -> list[str]:
    """Issue #17: ours against Triton on the KServe v2 protocol, every workload."""
    rows = results.get("v2_vs_triton") or []
    if not rows:
        return []
    lines = [
        "",
        "KServe v2, one protocol and one client: ours (POST /v2/models/{m}/infer) against "
        "Triton (PyTriton) on the same request bytes from hey, asking for `pooled` and "
        "`weights` (ours answers the graph's per-head weights [B, H, N], Triton's peer their "
        "mean [B, N]). Items/s ratio ours/Triton [range over the rounds]; p99 ratio "
        "Triton's/ours (above 1: ours is lower):",
        "",
        "| model | items | c | format | ours items/s | Triton items/s | items/s ratio | "
        "ours p99 ms | Triton p99 ms | p99 ratio | ours ahead on both |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["ours"], r["model"], r["items"], r["concurrency"])):
        fmt = "binary" if r["ours"] == "ours-v2-binary" else "JSON"
        lines.append(
            f"| {r['model']} | {r['items']} | {r['concurrency']} | {fmt} | "
            f"{r['ours_items_per_second']:,.0f} | {r['peer_items_per_second']:,.0f} | "
            f"{_ratio(r['items_per_second'])} | {r['ours_p99_ms']:.1f} | "
            f"{r['peer_p99_ms']:.1f} | {r['p99']['ratio']:.2f}x | "
            f"{'yes' if r['ahead'] else 'no'} |"
        )
    return lines


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["", "Targets:", "", "| target | measured | met | in this run |", "|---|---:|---|---|"]
    for t in results["targets"]:
        met = "yes" if t["met"] else "no"
        lines.append(f"| {t['target']} | {t['display']} | {met} | {t['context']} |")
    return lines


def profile_section(results: dict[str, Any]) -> list[str]:
    p = results.get("profile") or {}
    if not p.get("workloads"):
        return []
    works = p["workloads"]
    names = [f"{w['model']} [{w['items']}]" for w in works]
    lines = [
        "",
        f"Where our server's time goes: py-spy, 100 samples/s of every busy Python thread, "
        f"{p['series']} at concurrency {p['concurrency']} (raw stacks in "
        + ", ".join(f"`{w['raw_stacks']}`" for w in works)
        + "; flame graph: "
        + ", ".join(f"`{w['flamegraph']}`" for w in works if w["flamegraph"])
        + "). Share of busy samples by stage (thread-pool workers blocked on their queues, "
        "which py-spy counts as busy, left out):",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(works),
    ]
    stages: list[str] = []
    for w in works:
        stages += [s for s in w["stages"] if s not in stages and s != IDLE]
    busy = [w["samples"] - w["stages"].get(IDLE, 0) for w in works]
    for stage in stages:
        shares = [
            100 * w["stages"].get(stage, 0) / max(1, b) for w, b in zip(works, busy, strict=True)
        ]
        lines.append(f"| {stage} | " + " | ".join(f"{v:.1f}%" for v in shares) + " |")
    lines.append("| busy samples | " + " | ".join(str(b) for b in busy) + " |")
    idle = [str(w["stages"].get(IDLE, 0)) for w in works]
    lines.append(f"| ({IDLE}, samples) | " + " | ".join(idle) + " |")
    lines += [
        "",
        "The server's own stage metrics over the same load (mean ms per request; inference is "
        "per model run), its mean items per run and the load's throughput under the profiler:",
        "",
        "| workload | decode | queue | inference | diagnostics | encode | items/run | "
        "requests/s | p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, w in zip(names, works, strict=True):
        ms = w["server_stage_ms"]
        stage_ms = " | ".join(
            f"{ms[k]:.2f}" for k in ("decode", "queue", "inference", "diagnostics", "encode")
        )
        lines.append(
            f"| {name} | {stage_ms} | {w['mean_batch_items']:.1f} | "
            f"{w['requests_per_second']:,.1f} | {w['p50_ms']:.1f} |"
        )
    for name, w in zip(names, works, strict=True):
        lines += ["", f"Functions of `service/` by inclusive samples, {name}:", ""]
        for function, n in w["service_functions"][:10]:
            busy_samples = w["samples"] - w["stages"].get(IDLE, 0)
            lines.append(f"- {function}: {100 * n / max(1, busy_samples):.1f}%")
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = header(results) + raw_table(results) + cell_tables(results)
    lines += ratio_tables(results) + v2_table(results) + targets_table(results)
    lines += profile_section(results)
    if results["failures"]:
        lines += ["", "Failures:", ""]
        for f in results["failures"]:
            where = f.get("series") or f.get("server")
            lines.append(f"- round {f['round']}, {where}, {f['stage']}: {f['error'][:300]}")
    return "\n".join(lines) + "\n"


def _minor_label(value: float, _: int) -> str:
    """Log-axis minor ticks: label 2, 3 and 5 times a power of ten, as plain numbers."""
    return f"{value:,.0f}" if f"{value:.0f}"[0] in "235" and value >= 1 else ""


def plot(results: dict[str, Any], path: Path) -> None:
    """Items/s against concurrency per series, one panel per model and request size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    cells = lookup(results)
    models = sorted({k[1] for k in cells}, key=lambda m: (m != results["settings"]["models"][0], m))
    sizes = sorted({k[2] for k in cells})
    fig, axes = plt.subplots(
        len(models), len(sizes), figsize=(6.5 * len(sizes), 4.5 * len(models)), squeeze=False
    )
    for i, model in enumerate(models):
        for j, items in enumerate(sizes):
            ax = axes[i][j]
            for s in SERIES:
                points = sorted(
                    (k[3], v) for k, v in cells.items() if k[:3] == (s.name, model, items)
                )
                if not points:
                    continue
                xs = [c for c, _ in points]
                ys = [v["items_per_second"] for _, v in points]
                err = [
                    [v["items_per_second"] - v["items_per_second_min"] for _, v in points],
                    [v["items_per_second_max"] - v["items_per_second"] for _, v in points],
                ]
                ax.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    marker="o",
                    capsize=3,
                    label=s.label,
                    linestyle="-" if s.binary else "--",
                )
            raw = results["raw_onnxruntime"].get(model, {})
            for batch, style in ((str(items), ":"), ("64", "-.")):
                if batch in raw:
                    ax.axhline(
                        raw[batch]["items_per_second"],
                        color="grey",
                        linestyle=style,
                        linewidth=1,
                        label=f"raw ONNX Runtime, batch {batch}",
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
            ax.set_xticks(results["settings"]["concurrency"])
            ax.set_xticklabels([str(c) for c in results["settings"]["concurrency"]])
            ax.set_xlabel("concurrent requests (hey -c)")
            ax.set_ylabel("items/s (median of rounds, bars: min-max)")
            ax.set_title(f"{model}, {items}-item requests of 128 tokens")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                if label not in labels:
                    handles.append(h)
                    labels.append(label)
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=3,
        bbox_to_anchor=(0.5, -0.02 * (1 + math.ceil(len(labels) / 3))),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write(results: dict[str, Any], out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (out / f"{name}.md").write_text(text)
    print("\n" + text)
    if results["cells"]:
        plot(results, out / f"{name}.png")


def rerender(path: Path) -> None:
    """Derived figures (ratios, targets, the profile's stages) again from a run's JSON."""
    results = json.loads(path.read_text())
    compare_report.derive(results)
    for w in (results.get("profile") or {}).get("workloads", []):
        stacks = path.parent / w["raw_stacks"]
        if stacks.exists():
            w.update(pyspy.summarise(stacks.read_text()))
    write(results, path.parent, path.stem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_render", description=__doc__)
    parser.add_argument("json", type=Path, help="a compare.json")
    rerender(parser.parse_args(argv).json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
