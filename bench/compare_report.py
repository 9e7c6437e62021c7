"""``python -m bench.compare``'s figures: medians and spreads, ratios, targets, tables and a plot.

Pure functions of the measurements (no servers here), so the tests can check them on made-up
numbers. Every ratio is between figures of the same run; a ratio's spread is the range its two
sides' rounds allow: ``[min(a) / max(b), max(a) / min(b)]``.
"""

from __future__ import annotations

from statistics import median
from typing import Any

from bench.bodies import BY_NAME, SERIES

Key = tuple[str, str, int, int]  # series, model, items, concurrency
OURS_BINARY = "ours-npy"
# Each peer's binary path against ours answering the same way: LitServe answers JSON (base64 in),
# so ours answers JSON without diagnostics; Triton answers binary tensors, so ours answers .npz.
# Without an .npz cell, the JSON one stands in.
LIKE_FOR_LIKE = {
    "litserve-b64": ("ours-npy-nodiag",),
    "triton-binary": ("ours-npz", "ours-npy-nodiag"),
}
PEER_BINARY = tuple(LIKE_FOR_LIKE)
# Issue #17: one protocol (KServe v2), one client (hey), the same request bytes to both servers
V2_PAIRS = {"ours-v2-binary": "triton-binary", "ours-v2-json": "triton-json"}
TARGET_CONCURRENCY = 32


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the rounds, with the spread of items/s and p99, and worst cases."""

    def values(name: str) -> list[float]:
        return [float(r[name]) for r in runs if name in r]

    ips, p99 = values("items_per_second"), values("p99_ms")
    out: dict[str, Any] = {
        "rounds": len(runs),
        "requests": int(sum(values("requests"))),
        "failed": int(sum(values("failed"))),
        "requests_per_second": median(values("requests_per_second")),
        "items_per_second": median(ips),
        "items_per_second_min": min(ips),
        "items_per_second_max": max(ips),
        "p50_ms": median(values("p50_ms")),
        "p99_ms": median(p99),
        "p99_ms_min": min(p99),
        "p99_ms_max": max(p99),
        "max_ms": max(values("max_ms")),
        "cpu_seconds": median(values("cpu_seconds")),
        "cpu_ms_per_item": median(values("cpu_ms_per_item")),
        "peak_rss_mib": max(values("peak_rss_mib")),
    }
    if client := values("client_cpu_seconds"):
        out["client_cpu_seconds"] = median(client)
    if batch := values("mean_batch_items"):
        out["mean_batch_items"] = median(batch)
    return out


def ratio(a: dict[str, Any], b: dict[str, Any], name: str = "items_per_second") -> dict[str, float]:
    """``a / b`` of medians, with the range the rounds allow."""
    lo_a, hi_a = a.get(f"{name}_min", a[name]), a.get(f"{name}_max", a[name])
    lo_b, hi_b = b.get(f"{name}_min", b[name]), b.get(f"{name}_max", b[name])
    return {
        "ratio": a[name] / b[name] if b[name] else float("inf"),
        "low": lo_a / hi_b if hi_b else float("inf"),
        "high": hi_a / lo_b if lo_b else float("inf"),
    }


def raw_summary(raw: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model, batches in raw.items():
        for batch, runs in batches.items():
            ips = [r["items_per_second"] for r in runs]
            out.setdefault(model, {})[batch] = {
                "rounds": len(runs),
                "ms_per_run": median(r["ms_per_run"] for r in runs),
                "items_per_second": median(ips),
                "items_per_second_min": min(ips),
                "items_per_second_max": max(ips),
            }
    return out


def build(
    machine: dict[str, Any],
    settings: dict[str, Any],
    peers: dict[str, Any],
    raw: dict[str, dict[str, list[dict[str, float]]]],
    cells: dict[Key, list[dict[str, Any]]],
    skipped: dict[Key, str],
    failures: list[dict[str, Any]],
    profile: dict[str, Any],
    body_bytes: dict[str, int],
) -> dict[str, Any]:
    table = []
    for (series, model, items, c), runs in sorted(cells.items(), key=_order):
        s = BY_NAME[series]
        fmt_bytes = body_bytes.get(f"{s.fmt}/{model}/{items}", 0)
        table.append(
            {"series": series, "server": s.server, "label": s.label, "binary": s.binary}
            | {"model": model, "items": items, "concurrency": c, "body_bytes": fmt_bytes}
            | {"runs": runs, "summary": summarise(runs)}
        )
    results: dict[str, Any] = {
        "machine": machine,
        "settings": settings,
        "peers": peers,
        "raw_onnxruntime": raw_summary(raw),
        "cells": table,
        "skipped": [
            {"series": k[0], "model": k[1], "items": k[2], "concurrency": k[3], "reason": v}
            for k, v in sorted(skipped.items(), key=_order)
        ],
        "failures": failures,
        "profile": profile,
    }
    derive(results)
    return results


def derive(results: dict[str, Any]) -> None:
    """The figures computed from the cells: ratios and targets (again on a re-render)."""
    results["vs_raw"] = vs_raw(results)
    results["vs_peers"] = vs_peers(results)
    results["v2_vs_triton"] = v2_vs_triton(results)
    results["targets"] = targets(results)


def _order(item: tuple[Key, Any]) -> tuple[int, str, int, int]:
    (series, model, items, c), _ = item
    names = [s.name for s in SERIES]
    return (names.index(series) if series in names else 99, model, items, c)


def lookup(results: dict[str, Any]) -> dict[Key, dict[str, Any]]:
    return {
        (c["series"], c["model"], c["items"], c["concurrency"]): c["summary"]
        for c in results["cells"]
    }


def vs_raw(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each cell's items/s over raw ONNX Runtime's on the request's batch and on its best."""
    raw = results["raw_onnxruntime"]
    out = []
    for cell in results["cells"]:
        model_raw = raw.get(cell["model"], {})
        same = model_raw.get(str(cell["items"]))
        if not same:
            continue
        best = max(model_raw.values(), key=lambda r: r["items_per_second"])
        out.append(
            {k: cell[k] for k in ("series", "model", "items", "concurrency")}
            | {
                "same_batch": ratio(cell["summary"], same),
                "best_batch": ratio(cell["summary"], best),
            }
        )
    return out


def vs_peers(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of our series against each peer series on the same workload: items/s and p99
    (peer's p99 over ours, so above 1 means ours is lower)."""
    cells = lookup(results)
    ours = [s.name for s in SERIES if s.server == "ours"]
    peers = [s.name for s in SERIES if s.server != "ours"]
    out = []
    for (series, model, items, c), mine in cells.items():
        if series not in ours:
            continue
        for peer in peers:
            theirs = cells.get((peer, model, items, c))
            if theirs is None:
                continue
            out.append(
                {"ours": series, "peer": peer, "model": model, "items": items, "concurrency": c}
                | {"items_per_second": ratio(mine, theirs), "p99": ratio(theirs, mine, "p99_ms")}
            )
    return out


def v2_vs_triton(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Our v2 route against Triton's on every workload and concurrency both were measured on:
    items/s (ours over Triton's) and p99 (Triton's over ours: above 1, ours is lower)."""
    cells = lookup(results)
    out = []
    for (series, model, items, c), mine in cells.items():
        peer = V2_PAIRS.get(series)
        theirs = cells.get((peer, model, items, c)) if peer else None
        if peer is None or theirs is None:
            continue
        r, p = ratio(mine, theirs), ratio(theirs, mine, "p99_ms")
        out.append(
            {"ours": series, "peer": peer, "model": model, "items": items, "concurrency": c}
            | {"ours_items_per_second": mine["items_per_second"]}
            | {"peer_items_per_second": theirs["items_per_second"]}
            | {"ours_p99_ms": mine["p99_ms"], "peer_p99_ms": theirs["p99_ms"]}
            | {"items_per_second": r, "p99": p, "ahead": r["ratio"] > 1 and p["ratio"] > 1}
        )
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #7's targets as measured ratios, each with its context in this run."""
    cells = lookup(results)
    raw = results["raw_onnxruntime"]
    settings = results["settings"]
    models = settings.get("models", sorted({c["model"] for c in results["cells"]}))
    out: list[dict[str, Any]] = []
    c = TARGET_CONCURRENCY

    def add(target: str, value: float, goal: float, context: str, met: bool | None = None) -> None:
        met = value >= goal if met is None else met
        out.append(
            {"target": target, "ratio": value, "display": f"{value:.2f}x", "goal": goal}
            | {"met": met, "context": context}
        )

    for model in models:
        for items in sorted(settings.get("items", [1, 8]), reverse=True):
            ours, naive = (
                cells.get((OURS_BINARY, model, items, c)),
                cells.get(("naive-json", model, items, c)),
            )
            if ours and naive:
                r = ratio(ours, naive)
                context = f"[{r['low']:.2f}, {r['high']:.2f}] over the rounds"
                if js := cells.get(("ours-json", model, items, c)):
                    context += f"; ours with JSON lists too: {ratio(js, naive)['ratio']:.2f}x"
                add(
                    f">= 3x naive items/s, c={c}, {model} [{items}] (ours .npy)",
                    r["ratio"],
                    3,
                    context,
                )
    for model in models:
        for items in sorted(settings.get("items", [1, 8]), reverse=True):
            with_diag = cells.get((OURS_BINARY, model, items, c))
            for peer in PEER_BINARY:
                theirs = cells.get((peer, model, items, c))
                ours_name = next(
                    (n for n in LIKE_FOR_LIKE[peer] if (n, model, items, c) in cells), None
                )
                if not (ours_name and theirs):
                    continue
                mine = cells[(ours_name, model, items, c)]
                r, p = ratio(mine, theirs), ratio(theirs, mine, "p99_ms")
                context = (
                    f"items/s {mine['items_per_second']:,.0f} vs {theirs['items_per_second']:,.0f}"
                    f" [{r['low']:.2f}, {r['high']:.2f}]; p99 {mine['p99_ms']:.1f} vs "
                    f"{theirs['p99_ms']:.1f} ms"
                )
                if with_diag:
                    context += (
                        f"; with diagnostics: {ratio(with_diag, theirs)['ratio']:.2f}x items/s, "
                        f"p99 {with_diag['p99_ms']:.1f} ms"
                    )
                add(
                    f"ahead of {peer} on items/s and p99, c={c}, {model} [{items}] "
                    f"({BY_NAME[ours_name].label.removeprefix('ours, ')})",
                    r["ratio"],
                    1,
                    context,
                    met=r["ratio"] > 1 and p["ratio"] > 1,
                )
    for row in v2_vs_triton(results):
        if row["ours"] != "ours-v2-binary":
            continue
        r, p = row["items_per_second"], row["p99"]
        add(
            f"ahead of triton-binary on items/s and p99, same v2 binary bodies, "
            f"c={row['concurrency']}, {row['model']} [{row['items']}] (ours v2 binary)",
            r["ratio"],
            1,
            f"items/s {row['ours_items_per_second']:,.0f} vs {row['peer_items_per_second']:,.0f}"
            f" [{r['low']:.2f}, {r['high']:.2f}]; p99 {row['ours_p99_ms']:.1f} vs "
            f"{row['peer_p99_ms']:.1f} ms ({p['ratio']:.2f}x)",
            met=row["ahead"],
        )
    wide = models[-1] if len(models) > 1 else None
    for items in sorted(settings.get("items", [1, 8]), reverse=True):
        served = cells.get((OURS_BINARY, wide, items, c)) if wide else None
        model_raw = raw.get(wide or "", {})
        if not (served and str(items) in model_raw):
            continue
        same = model_raw[str(items)]
        best_batch, best = max(model_raw.items(), key=lambda kv: kv[1]["items_per_second"])
        r = ratio(served, same)
        context = f"raw: {same['items_per_second']:,.0f} items/s; [{r['low']:.2f}, {r['high']:.2f}]"
        if "client_cpu_seconds" in served:  # what shares the cores that raw has to itself
            context += (
                f"; CPU seconds in a {settings.get('seconds', '?')} s cell: server "
                f"{served['cpu_seconds']:.2f}, hey {served['client_cpu_seconds']:.2f}"
            )
        add(
            f">= 0.8x raw ONNX Runtime items/s, {wide} [{items}], c={c} (ours .npy), raw on "
            f"the same batch of {items}",
            r["ratio"],
            0.8,
            context,
        )
        add(
            f">= 0.8x raw ONNX Runtime items/s, {wide} [{items}], c={c} (ours .npy), raw on "
            f"its best batch ({best_batch})",
            ratio(served, best)["ratio"],
            0.8,
            f"raw: {best['items_per_second']:,.0f} items/s",
        )
    bound = settings.get("queue_bound", 256)
    ours_cells = [
        cell
        for cell in results["cells"]
        if cell["server"] == "ours" and cell["concurrency"] < bound
    ]
    if ours_cells:
        failed = sum(cell["summary"]["failed"] for cell in ours_cells)
        requests = sum(cell["summary"]["requests"] for cell in ours_cells)
        top = max(cell["concurrency"] for cell in ours_cells)
        out.append(
            {
                "target": f"no errors below the queue bound ({bound}): all of ours, c <= {top}",
                "ratio": float(failed),
                "display": f"{failed} failed",
                "goal": 0.0,
                "met": failed == 0,
                "context": f"{failed} failed of {requests:,} requests in {len(ours_cells)} cells",
            }
        )
    return out
