"""fp16 against fp32 on CPU: ``python -m bench.precision``.

    python -m bench.precision [--shapes 1x128,16x128,16x512,64x128] [--rounds 7] \\
        [--out results/bench]

Exports the service's default model (its committed checkpoint) and the wide model
(``knn-wide384``, its seeded initialisation) as fp32 and as fp16 (``export.precision``), then:

- parity of each fp16 graph against PyTorch's float32 on ``export.parity``'s cases (the worst
  over all cases), and the same for every committed model's checkpoint exported as fp16;
- what ONNX Runtime's CPU provider runs: the Cast nodes in the graph as written and in the
  session's optimised graph, and which operators of the optimised graph still read float16;
- ms per run of [batch, tokens] for fp32 and fp16 in one process, with the service's session
  options (``OnnxBackend``), ``--rounds`` rounds alternating the two graphs, each round the
  median of several runs; the median over rounds and the fp16/fp32 ratio.

Writes ``precision.json`` and ``precision.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bench.process import ROOT
from bench.serve import DEFAULT_MODEL, WIDE_MODEL, machine, wide_run, write_results
from export.onnx_export import export_onnx
from export.precision import convert_file
from export.verify import cpu_session, parity
from models.checkpoint import load_model
from service.core.backend import OnnxBackend

PRECISIONS = ("fp32", "fp16")


def float16_nodes(model_file: Path) -> dict[str, Any]:
    """Cast nodes in the graph as written, and in ONNX Runtime's optimised graph (CPU): Casts
    and the operator types that still read a float16 value."""
    written = sum(n.op_type == "Cast" for n in onnx.load(str(model_file)).graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        optimised = Path(tmp) / "optimised.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimised)
        options.log_severity_level = 3  # its warning that the file is for this machine only
        ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        graph = onnx.shape_inference.infer_shapes(onnx.load(str(optimised))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]}
    types |= {t.name: t.data_type for t in graph.initializer}
    half = {
        n.op_type
        for n in graph.node
        if n.op_type != "Cast" and any(types.get(i) == onnx.TensorProto.FLOAT16 for i in n.input)
    }
    return {
        "casts_written": written,
        "casts_optimised": sum(n.op_type == "Cast" for n in graph.node),
        "float16_ops_optimised": sorted(half),
    }


def worst_parity(model_file: Path, checkpoint: Path) -> dict[str, float]:
    """The worst figures over every parity case of one graph against its checkpoint."""
    model, _ = load_model(checkpoint)
    results = parity(cpu_session(model_file), model)
    head = [d for r in results for d in r.max_abs_diff_head.values()]
    return {
        "pooled": max(r.max_abs_diff_pooled for r in results),
        "weights": max(r.max_abs_diff_weights for r in results),
        "weight_sum_error": max(r.max_weight_sum_error for r in results),
        "weight_on_padding": max(r.max_weight_on_padding for r in results),
        "head": max(head, default=0.0),
        "ok_fp16": all(r.ok("fp16") for r in results),
    }


def export_pair(checkpoint: Path, folder: Path) -> dict[str, Path]:
    """``folder/fp32.onnx`` and ``folder/fp16.onnx`` from one checkpoint."""
    model, _ = load_model(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    files = {p: folder / f"{p}.onnx" for p in PRECISIONS}
    export_onnx(model, files["fp32"])
    export_onnx(model, files["fp16"])
    convert_file(files["fp16"])
    return files


def timings(
    files: dict[str, Path], input_dim: int, shapes: list[tuple[int, int]], rounds: int
) -> dict[str, dict[str, float]]:
    """Median ms per run per shape and precision, the precisions alternating round by round."""
    backends = {p: OnnxBackend(f, device="cpu") for p, f in files.items()}
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for batch, tokens in shapes:
        x = rng.standard_normal((batch, tokens, input_dim)).astype(np.float32)
        mask = np.ones((batch, tokens), dtype=bool)
        runs = max(3, 8192 // (batch * tokens))
        per: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for backend in backends.values():
            backend.run(x, mask)  # warm-up at this shape
        for _ in range(rounds):
            for precision, backend in backends.items():
                times = []
                for _ in range(runs):
                    started = time.perf_counter()
                    backend.run(x, mask)
                    times.append((time.perf_counter() - started) * 1000)
                per[precision].append(statistics.median(times))
        row = {p: statistics.median(v) for p, v in per.items()}
        row["ratio"] = row["fp16"] / row["fp32"]
        out[f"{batch}x{tokens}"] = row
        print(f"  {batch} x {tokens}: {row}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__)
    parser.add_argument("--shapes", default="1x128,16x128,16x512,64x128")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-precision")
    args = parser.parse_args(argv)
    shapes = [(int(b), int(n)) for b, n in (s.split("x") for s in args.shapes.split(","))]
    repository = ROOT / "model_repository"
    results: dict[str, Any] = {"machine": machine(), "models": {}, "committed": {}}
    results["machine"]["command"] = "python -m bench.precision " + " ".join(sys.argv[1:])
    for name in sorted(p.parent.parent.name for p in repository.glob("*/1/checkpoint")):
        checkpoint = repository / name / "1" / "checkpoint"
        files = export_pair(checkpoint, args.work / "committed" / name)
        results["committed"][name] = worst_parity(files["fp16"], checkpoint)
        print(f"{name}: {results['committed'][name]}", flush=True)
    checkpoints = {
        DEFAULT_MODEL: repository / DEFAULT_MODEL / "1" / "checkpoint",
        WIDE_MODEL: wide_run(args.work / "runs" / WIDE_MODEL),
    }
    for name, checkpoint in checkpoints.items():
        files = export_pair(checkpoint, args.work / name)
        model, _ = load_model(checkpoint)
        row: dict[str, Any] = {
            "width": model.config.dim,
            "depth": model.config.depth,
            "bytes": {p: f.stat().st_size for p, f in files.items()},
            "casts": {p: float16_nodes(f) for p, f in files.items()},
            "parity_fp16": worst_parity(files["fp16"], checkpoint),
        }
        print(f"{name}: {row}", flush=True)
        row["ms_per_run"] = timings(files, model.config.input_dim, shapes, args.rounds)
        results["models"][name] = row
    write_results(args.out, "precision", results, markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, shared with other work), commit "
        f"{m['commit']}, onnxruntime {m['onnxruntime']}. Command: `{m['command']}`.",
        "",
        "fp16 graphs against PyTorch float32, worst over every parity case (tolerance 1e-2; "
        "weight sums 2e-3):",
        "",
        "| model | pooled | weights | head output | weight sum error | on padding | ok |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    rows = results["committed"] | {
        name: row["parity_fp16"] for name, row in results["models"].items()
    }
    for name, p in rows.items():
        lines.append(
            f"| {name} | {p['pooled']:.1e} | {p['weights']:.1e} | {p['head']:.1e} | "
            f"{p['weight_sum_error']:.1e} | {p['weight_on_padding']:.0f} | {p['ok_fp16']} |"
        )
    lines += [
        "",
        "ms per run on CPU (median over rounds, the two graphs alternating; ratio < 1: fp16 "
        "faster).",
        "",
        "| model | batch x tokens | fp32 ms | fp16 ms | fp16 / fp32 |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, row in results["models"].items():
        for shape, t in row["ms_per_run"].items():
            lines.append(
                f"| {name} (width {row['width']}) | {shape} | {t['fp32']:.2f} | {t['fp16']:.2f} "
                f"| {t['ratio']:.2f} |"
            )
    lines += [
        "",
        "| model | file fp32 | file fp16 | fp16 Casts as written / optimised | operators "
        "reading float16 in ONNX Runtime's optimised fp16 graph |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    for name, row in results["models"].items():
        b, c = row["bytes"], row["casts"]["fp16"]
        lines.append(
            f"| {name} | {b['fp32']:,} | {b['fp16']:,} | {c['casts_written']} / "
            f"{c['casts_optimised']} | {', '.join(c['float16_ops_optimised'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
