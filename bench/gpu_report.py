"""``gpu.md`` from ``python -m bench.gpu_all``'s results: the machine, the providers in use, one
table per stage. Only figures the run recorded; a stage that did not run says why."""

from __future__ import annotations

from typing import Any


def markdown(results: dict[str, Any]) -> str:
    stages = results["stages"]
    env = stages.get("environment", {}).get("result", {})
    lines = [
        "# GPU run (`python -m bench.gpu_all`)",
        "",
        *([f"**{results['dry_run_cpu']}**", ""] if "dry_run_cpu" in results else []),
        f"GPU: {env.get('gpu', 'not recorded')}; torch {env.get('torch')} (CUDA "
        f"{env.get('torch_cuda')}, sees a GPU: {env.get('torch_sees_gpu')}); onnxruntime "
        f"{env.get('onnxruntime')}; Python {env.get('python')}; {results['date']}; budget "
        f"{results['budget_seconds']:.0f} s. Command: `{results['command']}`.",
        "",
        "| stage | status | seconds (share) | why not |",
        "|---|---|---:|---|",
    ]
    for name, s in stages.items():
        lines.append(
            f"| {name} | {s['status']} | {s['seconds']:.0f} ({s['share_seconds']:.0f}) | "
            f"{s.get('reason', '')} |"
        )
    lines += ["", *providers(env), *onnxruntime_table(stages), *torch_table(stages)]
    lines += [*service_table(stages), *sweep_lines(stages)]
    return "\n".join(lines) + "\n"


def providers(env: dict[str, Any]) -> list[str]:
    lines = [
        "## ONNX Runtime providers (from `session.get_providers()`)",
        "",
        f"Available in this build: {', '.join(env.get('onnxruntime_available', [])) or 'none'}.",
        "",
        "| provider | asked for | session runs on | in use |",
        "|---|---|---|---|",
    ]
    for provider, s in env.get("sessions", {}).items():
        if "skipped" in s:
            lines.append(f"| {provider} | - | skipped: {s['skipped']} | - |")
        else:
            lines.append(
                f"| {provider} | {', '.join(s['asked'])} | {s['runs_on']} | "
                f"{', '.join(s['in_use'])} |"
            )
    return [*lines, ""]


def _ran(stages: dict[str, Any], name: str) -> dict[str, Any] | None:
    stage = stages.get(name, {})
    return stage.get("result") if stage.get("status") == "ran" else None


def _not_run(result: dict[str, Any]) -> list[str]:
    cut = result.get("not_run", [])
    return [f"Not run (the stage's share was spent): {', '.join(cut)}.", ""] if cut else []


def onnxruntime_table(stages: dict[str, Any]) -> list[str]:
    result = _ran(stages, "onnxruntime")
    if result is None:
        return []
    lines = [
        "## ONNX Runtime: the service's IO-binding backend against raw CUDA",
        "",
        "items/s per variant; service/raw: service-cuda over raw-cuda-run; device/raw: inputs "
        "and outputs on the device over raw-cuda-run (the IO-binding ceiling); diff: the "
        "largest |difference| from the reference variant.",
        "",
        "| model | precision | B | N | cpu | service-cuda | raw-cuda-run | raw-cuda-device | "
        "service/raw | device/raw | worst diff (vs) | fp16 - fp32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in result["cells"]:
        v = row["variants"]

        def ips(name: str, v: dict[str, Any] = v) -> str:
            return f"{v[name]['items_per_second']:,.0f}" if name in v else "-"

        raw = v["raw-cuda-run"]["items_per_second"]
        worst = max(c["max_abs_diff_vs_reference"] for c in v.values() if isinstance(c, dict))
        lines.append(
            f"| {row['model']} | {row['precision']} | {row['batch']} | {row['tokens']} | "
            f"{ips('cpu')} | {ips('service-cuda')} | {ips('raw-cuda-run')} | "
            f"{ips('raw-cuda-device')} | {v['service-cuda']['items_per_second'] / raw:.2f}x | "
            f"{v['raw-cuda-device']['items_per_second'] / raw:.2f}x | "
            f"{worst:.1e} ({v['reference']}) | {precision_gap(row)} |"
        )
    for model, p in result.get("providers", {}).items():
        lines.append(f"\nProviders, {model}: " + ", ".join(f"{k} {v}" for k, v in p.items()))
    for model, why in result.get("fp16_skipped", {}).items():
        lines.append(f"\nfp16 of {model} skipped: {why}")
    return [*lines, "", *_not_run(result)]


def precision_gap(row: dict[str, Any]) -> str:
    gap = row.get("fp16_vs_fp32_max_abs_diff")
    return "-" if gap is None else f"{gap:.1e}"


def torch_table(stages: dict[str, Any]) -> list[str]:
    result = _ran(stages, "torch")
    if result is None:
        return []
    lines = [
        f"## PyTorch on `{result['device']}`: fp32 against fp16 (autocast), inputs on the device",
        "",
        "| model | B | N | fp32 ms p50 | fp32 items/s | fp16 ms p50 | fp16 items/s | "
        "fp16/fp32 | pooled max diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["cells"]:
        head = f"| {row['model']} | {row['batch']} | {row['tokens']} |"
        if "out_of_memory" in row:
            lines.append(f"{head} out of memory: {row['out_of_memory']} |||||")
            continue
        a, b = row["fp32"], row["fp16"]
        lines.append(
            f"{head} {a['ms_p50']:.3f} | {a['items_per_second']:,.0f} | {b['ms_p50']:.3f} | "
            f"{b['items_per_second']:,.0f} | "
            f"{b['items_per_second'] / a['items_per_second']:.2f}x | "
            f"{row['fp16_max_abs_diff']:.1e} |"
        )
    if result.get("peak_memory_bytes"):
        lines.append(f"\nPeak GPU memory: {result['peak_memory_bytes'] / 2**30:.1f} GiB.")
    return [*lines, "", *_not_run(result)]


def service_table(stages: dict[str, Any]) -> list[str]:
    result = _ran(stages, "service")
    if result is None:
        return []
    lines = [
        f"## The service: `python -m service {' '.join(result['flags'])}`",
        "",
        f"Providers in use (`GET /info`): {result.get('providers_in_use')}.",
        "",
    ]
    if "load_skipped" in result:
        lines += [f"Load skipped: {result['load_skipped']}", ""]
    rows = [
        (model, concurrency, cell)
        for model, cells in result["models"].items()
        for concurrency, cell in cells["load"].items()
    ]
    if rows:
        lines += [
            "| model | concurrency | requests/s | items/s | p50 ms | p99 ms | items per run |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for model, concurrency, c in rows:
            lines.append(
                f"| {model} | {concurrency} | {c['requests_per_second']:,.1f} | "
                f"{c['items_per_second']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
                f"{c['mean_batch_items']:.1f} |"
            )
    return [*lines, "", *_not_run(result)]


def sweep_lines(stages: dict[str, Any]) -> list[str]:
    result = _ran(stages, "sweep")
    if result is None:
        return []
    return [
        "## Sweep",
        "",
        f"`{result['command']}`: {len(result['finished'])} of {result['runs']} runs finished in "
        f"{result['seconds']:.0f} s"
        + (", stopped at the deadline" if result["stopped_at_deadline"] else "")
        + f"; ks with every run finished: {result['complete_ks']} (sweep.md has their table)."
        + (f" {result['stacked_note']}." if result["stacked_note"] else ""),
        "",
    ]
