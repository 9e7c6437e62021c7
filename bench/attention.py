"""The encoder attention candidates side by side: ``python -m bench.attention``.

    python -m bench.attention [--tokens 128,512,1024,2048] [--batch 16] [--out results/bench]

What ONNX Runtime 1.32 offers on CPU for the encoder's masked self-attention, each exported
from the same checkpoints (the default model and ``knn-wide384``) and measured the same way:

- ``explicit``: MatMul, Softmax, MatMul (the version-1 graphs): (B, H, N, N) scores;
- ``explicit, ORT fusion``: the same after ``onnxruntime.transformers.optimizer`` (BERT
  fusions), and ONNX Runtime's own level-ALL optimiser: does anything fuse the pattern?
- ``Attention (opset 23)``: the standard operator; ONNX Runtime 1.32 wants its boolean mask as
  [B, 1, N, N] (it refuses [B, 1, 1, N]);
- ``MultiHeadAttention + key_padding_mask``: the contrib operator with its 2-D mask;
- ``chunked (Scan, 256 queries)``: explicit attention one block of 256 queries at a time;
- ``MultiHeadAttention, padding in the keys``: the export's choice (``export.attention``),
  with one extra key channel and with the head size rounded up to a multiple of 8.

Per candidate and model: parity against PyTorch on ``export.parity``'s cases, then for each
token count a fresh process (``bench.memrun``, this checkout's ``OnnxBackend`` session
options) running [batch, N] 3 to 8 times: peak RSS above the loaded session (inputs included)
and the median ms per run; then, per model, every candidate in one process with runs
alternating (the time comparison). Writes ``attention.json`` and ``attention.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import onnxscript
import torch

from bench.memory import Side, memrun
from bench.process import ROOT
from bench.serve import DEFAULT_MODEL, WIDE_MODEL, machine, wide_run, write_results
from export.attention import MULTI_HEAD_ATTENTION, Translation, multi_head_attention
from export.onnx_export import export_onnx
from export.verify import cpu_session, parity
from models.checkpoint import load_model
from models.model import PoolingModel

op: Any = onnxscript.opset18
KEY_PADDING_ATTENTION = torch.ops.adapool.key_padding_attention.default
CHUNK = 256


def _mha_with_mask_op() -> onnxscript.values.Op:
    """MultiHeadAttention with its optional ``bias`` and ``key_padding_mask`` inputs."""
    param = onnx.defs.OpSchema.FormalParameter
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    schema = onnx.defs.OpSchema(
        "MultiHeadAttention",
        "com.microsoft",
        1,
        inputs=[
            param("query", "T"),
            param("key", "T"),
            param("value", "T"),
            param("bias", "T", param_option=optional),
            param("key_padding_mask", "M", param_option=optional),
        ],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)"], ""), ("M", ["tensor(int32)"], "")],
        attributes=[
            onnx.defs.OpSchema.Attribute(a, onnx.helper.make_attribute(a, v))
            for a, v in {"num_heads": 1, "scale": 0.0}.items()
        ],
    )
    return onnxscript.values.Op(MULTI_HEAD_ATTENTION.opset, "MultiHeadAttention", schema)


MHA_WITH_MASK = _mha_with_mask_op()


def mha_key_padding_mask(q: Any, k: Any, v: Any, mask: Any, num_heads: int, scale: float) -> Any:
    """MultiHeadAttention with key_padding_mask (B, N) int32: ONNX Runtime's unfused path."""
    padding = op.Cast(mask, to=onnx.TensorProto.INT32)
    return MHA_WITH_MASK(q, k, v, None, padding, num_heads=num_heads, scale=scale)


def attention_23(q: Any, k: Any, v: Any, mask: Any, num_heads: int, scale: float) -> Any:
    """The standard Attention operator, the boolean mask expanded to (B, 1, N, N)."""
    n = op.Shape(q, start=1, end=2)
    size = op.Concat(op.Shape(q, start=0, end=1), op.Constant(value_ints=[1]), n, n, axis=0)
    full = op.Expand(op.Unsqueeze(mask, op.Constant(value_ints=[1, 2])), size)
    # One output only: onnxscript would declare all four, and ONNX Runtime computes the
    # present key and value (and leaves its fast paths) when they are declared.
    from torch.onnx._internal.exporter._torchlib.ops.hop import call_op

    (out,) = call_op(
        "Attention", q, k, v, full, q_num_heads=num_heads, kv_num_heads=num_heads, scale=scale
    )
    return out


def chunked(q: Any, k: Any, v: Any, mask: Any, num_heads: int, scale: float) -> Any:
    """Explicit attention over CHUNK queries at a time: a Scan over the query blocks, whose
    body holds (B, H, CHUNK, N) scores. Queries are padded to a multiple of CHUNK."""
    from onnxscript import ir

    head_dim = q.shape[2] // num_heads

    def heads(x: Any) -> Any:  # (B, N, D) -> (B, H, N, Dh)
        split = op.Reshape(x, op.Constant(value_ints=[0, 0, num_heads, head_dim]))
        return op.Transpose(split, perm=[0, 2, 1, 3])

    keys_t = op.Transpose(heads(k), perm=[0, 1, 3, 2])
    values = heads(v)
    zero, minus_inf = op.Constant(value_float=0.0), op.Constant(value_float=float("-inf"))
    bias = op.Unsqueeze(op.Where(mask, zero, minus_inf), op.Constant(value_ints=[1, 2]))
    n, block = op.Shape(q, start=1, end=2), op.Constant(value_ints=[CHUNK])
    pad = op.Mod(op.Sub(block, op.Mod(n, block)), block)
    none = op.Constant(value_ints=[0])
    padded = op.Pad(heads(q), op.Concat(none, none, none, none, none, none, pad, none, axis=0))
    blocks = op.Reshape(padded, op.Constant(value_ints=[0, 0, -1, CHUNK, head_dim]))
    query = ir.Value(name="query_block", type=ir.TensorType(ir.DataType.FLOAT))
    factor = op.Constant(value_float=scale)
    body: list[ir.Node] = []

    def node(op_type: str, *inputs: Any, **attributes: int) -> Any:
        attrs = [ir.AttrInt64(name, value) for name, value in attributes.items()]
        body.append(ir.Node("", op_type, list(inputs), attributes=attrs, num_outputs=1))
        return body[-1].outputs[0]

    scores = node("Add", node("Mul", node("MatMul", query, keys_t), factor), bias)
    out_block = node("MatMul", node("Softmax", scores, axis=-1), values)
    graph = ir.Graph([query], [out_block], nodes=body, name="query_block_attention")
    out = op.Scan(blocks, body=graph, num_scan_inputs=1, scan_input_axes=[2], scan_output_axes=[2])
    out = op.Reshape(out, op.Constant(value_ints=[0, 0, -1, head_dim]))  # (B, H, T * CHUNK, Dh)
    out = op.Slice(out, none, n, op.Constant(value_ints=[2]))
    return op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))


def _table(fn: Callable[..., Any]) -> Translation:
    return {KEY_PADDING_ATTENTION: fn}


# name -> (translation or None for explicit, opset, run ONNX Runtime's transformer fusions)
CANDIDATES: dict[str, tuple[Translation | None, int | None, bool]] = {
    "explicit (version 1)": (None, None, False),
    "explicit, ORT fusion": (None, None, True),
    "Attention (opset 23)": (_table(attention_23), 23, False),
    "MultiHeadAttention + key_padding_mask": (_table(mha_key_padding_mask), None, False),
    f"chunked (Scan, {CHUNK} queries)": (_table(chunked), None, False),
    "MultiHeadAttention, padding in 1 key channel": (
        _table(partial(multi_head_attention, channels=1)),
        None,
        False,
    ),
    "MultiHeadAttention, padding in the keys (export)": (_table(multi_head_attention), None, False),
}


def fuse(model_file: Path, model: PoolingModel) -> dict[str, Any]:
    """Rewrite ``model_file`` with ONNX Runtime's BERT fusions; what fused, and what ONNX
    Runtime's own optimiser (level ALL) leaves of the pattern."""
    from onnxruntime.transformers import optimizer

    config = model.config
    fused = optimizer.optimize_model(
        str(model_file), model_type="bert", num_heads=config.num_heads, hidden_size=config.dim
    )
    fused.save_model_to_file(str(model_file))
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    attention = {k: v for k, v in ops.items() if "Attention" in k or k == "Softmax"}
    return {"transformers_fusions": stats, "ort_optimised_attention_ops": attention}


def candidate(name: str, model: PoolingModel, folder: Path) -> dict[str, Any]:
    translation, opset, fusion = CANDIDATES[name]
    path = folder / (name.replace(" ", "_").replace(",", "").replace("/", "") + ".onnx")
    export_onnx(model, path, attention=translation, opset=opset)
    out: dict[str, Any] = {"file": str(path)}
    if fusion:
        out |= fuse(path, model)
    results = parity(cpu_session(path), model)
    out["parity_max_abs_diff"] = max(
        max(r.max_abs_diff_pooled, r.max_abs_diff_weights) for r in results
    )
    out["parity_ok"] = all(r.ok() for r in results)
    return out


def alternating(
    here: Side, rows: dict[str, dict[str, Any]], tokens: list[int], batch: int
) -> dict[str, list[float]]:
    """ms per run of every candidate in one process, round-robin, per token count: the time
    comparison (a fresh process per cell only measures memory well on a shared machine)."""
    spec = {
        "models": [{"path": row["file"], "session": {"kind": "backend"}} for row in rows.values()],
        "steps": [{"shape": [batch, n], "runs": max(5, 131072 // (batch * n))} for n in tokens],
    }
    out = memrun(here, spec)
    print(f"alternating: {out}", flush=True)
    return {str(n): step["ms_per_run"] for n, step in zip(tokens, out["steps"], strict=True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attention", description=__doc__)
    parser.add_argument("--tokens", default="128,512,1024,2048")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-attention")
    args = parser.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",")]
    checkpoints = {
        DEFAULT_MODEL: ROOT / "model_repository" / DEFAULT_MODEL / "1" / "checkpoint",
        WIDE_MODEL: wide_run(args.work / "runs" / WIDE_MODEL),
    }
    here = Side("after", ROOT, args.work)
    results: dict[str, Any] = {"machine": machine(), "batch": args.batch, "models": {}}
    results["alternating"] = {}
    results["machine"]["command"] = "python -m bench.attention " + " ".join(sys.argv[1:])
    for model_name, checkpoint in checkpoints.items():
        model, _ = load_model(checkpoint)
        folder = args.work / model_name
        folder.mkdir(parents=True, exist_ok=True)
        rows = {}
        for name in CANDIDATES:
            row = candidate(name, model, folder)
            for n in tokens:
                spec = {
                    "models": [{"path": row["file"], "session": {"kind": "backend"}}],
                    "steps": [
                        {"shape": [args.batch, n], "runs": max(3, 16384 // (args.batch * n))}
                    ],
                }
                run = memrun(here, spec)
                step = run["steps"][0]
                row[str(n)] = {
                    "peak_mib": step["peak_mib"] - run["rss_loaded_mib"],
                    "ms_per_run": step["ms_per_run"][0],
                }
            print(f"{model_name} {name}: {row}", flush=True)
            rows[name] = row
        results["models"][model_name] = rows
        results["alternating"][model_name] = alternating(here, rows, tokens, args.batch)
    write_results(args.out, "attention", results, markdown(results, tokens))
    return 0


def markdown(results: dict[str, Any], tokens: list[int]) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, shared with other work), commit "
        f"{m['commit']}, onnxruntime {m['onnxruntime']}. Command: `{m['command']}`. Batch "
        f"{results['batch']}; peak: MiB of RSS above the loaded session (inputs included), a "
        "fresh process per cell; ms: median of 3 to 8 runs there (indicative; the alternating runs "
        "below compare times).",
        "",
        "| model | candidate | parity (max abs diff) | "
        + " | ".join(f"{n:,} tokens: peak MiB, ms" for n in tokens)
        + " |",
        "|---|---|---:|" + "---:|" * len(tokens),
    ]
    notes = []
    for model, rows in results["models"].items():
        for name, row in rows.items():
            ok = "" if row["parity_ok"] else " (FAILED)"
            cells = " | ".join(
                f"{row[str(n)]['peak_mib']:,.0f}, {row[str(n)]['ms_per_run']:,.0f}" for n in tokens
            )
            lines.append(f"| {model} | {name} | {row['parity_max_abs_diff']:.1e}{ok} | {cells} |")
            if "transformers_fusions" in row:
                notes.append(
                    f"- {model}: `onnxruntime.transformers` BERT fusions applied "
                    f"{row['transformers_fusions'] or 'none'}; attention ops after ONNX Runtime's "
                    f"own optimiser: {row['ort_optimised_attention_ops']}"
                )
    for model, cells in results["alternating"].items():
        names = list(results["models"][model])
        lines += [
            "",
            f"ms per run, {model}, every candidate in one process, runs alternating (the ratio "
            "to the explicit graph in brackets):",
            "",
            "| candidate | " + " | ".join(f"{n:,} tokens" for n in tokens) + " |",
            "|---|" + "---:|" * len(tokens),
        ]
        for i, name in enumerate(names):
            row = []
            for n in tokens:
                ms, explicit = cells[str(n)][i], cells[str(n)][0]
                row.append(f"{ms:,.1f} ({ms / explicit:.2f}x)")
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join([*lines, "", *notes]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
