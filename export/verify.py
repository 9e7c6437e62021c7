"""Verify exported models: integrity, graph signature and ONNX Runtime against PyTorch.

    python -m export.verify model_repository            # every model and version
    python -m export.verify model_repository/NAME/1     # one version

Per version: onnx.checker (full check); sha256 of model.onnx and of the source checkpoint
against the manifest; inputs and outputs named, typed and with dynamic batch and token axes;
no value in the graph with the token axis twice (memory linear in tokens); Triton's
config.pbtxt matching the manifest; ONNX Runtime against the PyTorch checkpoint on the parity
cases of :mod:`export.parity` (max abs difference <= 1e-4, tokens 1 to 2,048; 1e-2 for an fp16
version, whose manifest must say fp16 where its graph stores float16 weights); weights summing
to 1 per head over real tokens and 0 on padding. Prints one line per check and exits 1 on any
failure.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.onnx_export import HEAD_OUTPUTS, INPUT_NAMES, exports_contributions, output_names
from export.parity import TOLERANCE, Case, CaseResult, Outputs, compare, make_cases
from export.precision import graph_precision
from export.repository import (
    CHECKPOINT_DIR,
    MANIFEST_FILE,
    TRITON_CONFIG,
    VersionDir,
    sha256_file,
    triton_config,
    versions_tool,
)
from modelrepo import ManifestError, read_manifest
from models.checkpoint import load_model
from models.model import PoolingModel

ONNX_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.BOOL: "bool"}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: ort.InferenceSession, case: Case) -> Outputs:
    """Every output of the graph, by name."""
    names = [o.name for o in session.get_outputs()]
    feeds = {"embeddings": case.embeddings, "attention_mask": case.attention_mask}
    return dict(zip(names, session.run(names, feeds), strict=True))


@torch.no_grad()
def run_torch(model: PoolingModel, case: Case) -> Outputs:
    """The outputs an export of ``model`` has (``output_names``), from PyTorch."""
    names = output_names(model)
    out = model(
        torch.from_numpy(case.embeddings),
        torch.from_numpy(case.attention_mask),
        contributions="contributions" in names,
    )
    values = {"pooled": out.pooled, "weights": out.weights, "contributions": out.contributions}
    values |= {HEAD_OUTPUTS[t]: out.output for t in HEAD_OUTPUTS}
    return {name: values[name].numpy() for name in names}


def leading_real_tokens(model: PoolingModel) -> int:
    """How many first tokens must be real: a token or indices query needs its tokens."""
    pooling = model.config.pooling
    if pooling.method != "adapool":
        return 0
    if pooling.query == "token":
        return pooling.query_index + 1
    if pooling.query == "indices":
        return max(pooling.query_indices) + 1
    return 0


def min_real_tokens(model: PoolingModel) -> int:
    """Rows are padded at the end: a token or indices query needs its tokens to be real."""
    return max(1, leading_real_tokens(model))


def output_bias(model: PoolingModel) -> np.ndarray | None:
    """(K,) the constant part of a model's head output that no token contributes, or None."""
    if not exports_contributions(model):
        return None
    with torch.no_grad():
        bias: np.ndarray = model.output_bias().numpy()
    return bias


def parity(session: ort.InferenceSession, model: PoolingModel) -> list[CaseResult]:
    """ONNX Runtime against PyTorch on every parity case.

    PyTorch runs as trained: fused attention (SDPA), explicit where probabilities are read
    (tests/models prove the two paths equal within 1e-5); the explicit path throughout would
    take seconds per 2,048-token case.
    """
    model.eval()
    model.set_fused_attention(True)
    bias = output_bias(model)
    results = []
    cases = make_cases(
        model.config.input_dim, min_real_tokens(model), leading=leading_real_tokens(model)
    )
    for case in cases:
        try:
            onnx_out = run_onnx(session, case)
        except Exception as exc:  # ORT raises its own types; report which case failed and why
            message = str(exc).splitlines()[0][:160]
            print(f"  onnxruntime failed on {case.name}: {message}", file=sys.stderr)
            results.append(CaseResult.failed(case, output_names(model)))
            continue
        results.append(compare(case, onnx_out, run_torch(model, case), bias))
    return results


# Rank of every graph input and output, and its dynamic axes (batch; tokens where it has them).
RANKS = {
    "embeddings": 3,
    "attention_mask": 2,
    "pooled": 2,
    "weights": 3,
    "logits": 2,
    "prediction": 2,
    "contributions": 3,
}
DYNAMIC = {
    "embeddings": (0, 1),
    "attention_mask": (0, 1),
    "pooled": (0,),
    "weights": (0, 2),
    "logits": (0,),
    "prediction": (0,),
    "contributions": (0, 1),
}


def _signature(model: onnx.ModelProto, outputs: list[str]) -> list[Check]:
    """The graph's inputs and ``outputs`` (the manifest's), named, typed and with dynamic axes."""
    checks = []
    graph = model.graph
    expected = {
        name: ("bool" if name == "attention_mask" else "float32", RANKS.get(name, -1))
        for name in [*INPUT_NAMES, *outputs]
    }
    values = {v.name: v for v in [*graph.input, *graph.output]}
    names_ok = [i.name for i in graph.input] == list(INPUT_NAMES) and [
        o.name for o in graph.output
    ] == outputs
    checks.append(Check("input/output names", names_ok, str(list(values))))
    for name, (dtype, rank) in expected.items():
        if name not in values:
            continue
        tensor = values[name].type.tensor_type
        dims = tensor.shape.dim
        got = ONNX_TYPES.get(tensor.elem_type, str(tensor.elem_type))
        ok = got == dtype and len(dims) == rank
        checks.append(Check(f"{name} is {dtype} of rank {rank}", ok, f"{got}, rank {len(dims)}"))
    # Dynamic axes: batch on every tensor, tokens on the inputs, weights and contributions.
    dynamic = {name: DYNAMIC.get(name, (0,)) for name in expected}
    frozen = [
        f"{name}[{axis}]={values[name].type.tensor_type.shape.dim[axis].dim_value}"
        for name, axes in dynamic.items()
        if name in values
        for axis in axes
        if axis < len(values[name].type.tensor_type.shape.dim)
        and not values[name].type.tensor_type.shape.dim[axis].dim_param
    ]
    checks.append(Check("dynamic batch and token axes", not frozen, ", ".join(frozen) or "ok"))
    return checks


def quadratic_values(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Values of the graph whose shape has the token axis twice (memory quadratic in tokens),
    and values whose shape is not known (which could hide one), after shape inference."""
    tokens = model.graph.input[0].type.tensor_type.shape.dim[1].dim_param
    graph = onnx.shape_inference.infer_shapes(model).graph
    quadratic, unknown = [], []
    for value in [*graph.value_info, *graph.output]:
        if not value.type.tensor_type.HasField("shape"):
            unknown.append(value.name)
            continue
        dims = [d.dim_param or str(d.dim_value) for d in value.type.tensor_type.shape.dim]
        if tokens and sum(tokens in d for d in dims) >= 2:
            quadratic.append(f"{value.name} [{', '.join(dims)}]")
    return quadratic, unknown


def _memory_check(model: onnx.ModelProto) -> Check:
    name = "memory linear in tokens (no [.., tokens, tokens] value)"
    try:
        quadratic, unknown = quadratic_values(model)
    except (onnx.shape_inference.InferenceError, IndexError) as exc:
        return Check(name, False, f"shape inference failed: {str(exc).splitlines()[0][:160]}")
    detail = ", ".join(quadratic[:3]) + (f" and {len(quadratic) - 3} more" * (len(quadratic) > 3))
    if unknown:
        detail += f"; shape unknown: {', '.join(unknown[:3])}"
    return Check(name, not detail, detail)


def verify_version(version: VersionDir) -> list[Check]:
    """Every check for one model version."""
    checks: list[Check] = []
    if not (version.path / MANIFEST_FILE).exists():
        return [Check("manifest.json present", False, f"{version.label} has no manifest.json")]
    try:
        manifest = read_manifest(version.manifest_file)
    except ManifestError as exc:  # what the service would report as the reason it is not ready
        return [Check("manifest.json is valid", False, str(exc))]
    checks.append(Check("manifest.json is valid", True, f"format {manifest.format}"))
    try:
        onnx.checker.check_model(str(version.model_file), full_check=True)
        checks.append(Check("onnx.checker", True))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        checks.append(Check("onnx.checker", False, str(exc).splitlines()[0][:200]))
    files = {"model.onnx": version.model_file} | {
        f"{CHECKPOINT_DIR}/{p.name}": p for p in sorted(version.checkpoint_dir.glob("*"))
    }
    for rel, path in files.items():
        expected = manifest.sha256.get(rel)
        actual = sha256_file(path)
        detail = "" if expected == actual else f"manifest {expected}, file {actual}"
        checks.append(Check(f"sha256 {rel}", expected == actual, detail))
    missing = [rel for rel in manifest.sha256 if rel not in files]
    checks.append(Check("every file in the manifest exists", not missing, ", ".join(missing)))
    outputs = list(manifest.output_names)
    graph = onnx.load(str(version.model_file))
    checks.extend(_signature(graph, outputs))
    stored = graph_precision(graph)
    checks.append(
        Check(
            f"precision {manifest.precision} as the manifest says",
            stored == manifest.precision,
            f"the graph's weights are {stored}",
        )
    )
    checks.append(_memory_check(graph))

    config_path = version.path.parent / TRITON_CONFIG
    same = config_path.exists() and config_path.read_text() == triton_config(version.name, manifest)
    checks.append(Check("config.pbtxt matches the manifest", same, str(config_path)))

    if not version.checkpoint_dir.exists():
        checks.append(Check("source checkpoint present", False, "no checkpoint/ folder"))
        return checks
    try:
        model, _ = load_model(version.checkpoint_dir)
    except Exception as exc:  # a broken checkpoint is a failed check, not a crash
        return [*checks, Check("source checkpoint loads", False, f"{type(exc).__name__}: {exc}")]
    model_outputs = list(output_names(model))
    checks.append(
        Check(
            "the manifest's outputs are the checkpoint model's",
            outputs == model_outputs,
            str(model_outputs),
        )
    )
    try:
        session = cpu_session(version.model_file)
    except Exception as exc:  # an unloadable graph is a failed check, not a crash
        return [*checks, Check("onnxruntime loads the model", False, str(exc)[:200])]
    for result in parity(session, model):
        ok = result.ok(manifest.precision)
        checks.append(Check(f"parity {result.name}", ok, describe(result, manifest.precision)))
    return checks


def describe(result: CaseResult, precision: str = "fp32") -> str:
    """One parity case's figures, in a line."""
    head = "".join(f", {name} {diff:.2e}" for name, diff in result.max_abs_diff_head.items())
    terms = (
        f", contributions add up within {result.contribution_sum_error:.1e} and are "
        f"{result.max_contribution_on_padding:.1e} on padding"
        if "contributions" in result.max_abs_diff_head
        else ""
    )
    return (
        f"pooled {result.max_abs_diff_pooled:.2e}, weights {result.max_abs_diff_weights:.2e}"
        f"{head}, sum error {result.max_weight_sum_error:.1e}, on padding "
        f"{result.max_weight_on_padding:.1e}{terms} (tolerance {TOLERANCE[precision]:g})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    versions = versions_tool("export.verify", __doc__, argv)
    failed = 0
    for version in versions:
        checks = verify_version(version)
        bad = [c for c in checks if not c.ok]
        failed += bool(bad)
        print(f"{'PASS' if not bad else 'FAIL'} {version.name}/{version.version} ({version.path})")
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            print(f"  {mark} {check.name}" + (f": {check.detail}" if check.detail else ""))
    print(f"{len(versions) - failed} of {len(versions)} model versions passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
