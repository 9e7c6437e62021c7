"""Export a trained run into a versioned model repository.

    python -m export runs/adapool-token-k8-seed0 --name knn-adapool-ego --version 1 \\
        --repository model_repository

Writes ``<repository>/<name>/<version>/`` (model.onnx, manifest.json, checkpoint/) and
``<repository>/<name>/config.pbtxt``, then checks ONNX Runtime against PyTorch on the parity
cases and records the result in the manifest. Refuses to overwrite an existing version.
``--precision fp16`` writes a float16 graph with float32 inputs and outputs (``export.precision``),
checked against PyTorch's float32 within ``export.parity.FP16_TOLERANCE``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from export.attention import ATTENTION
from export.onnx_export import HEAD_OUTPUTS, INPUT_NAMES, export_onnx, output_names
from export.parity import TOLERANCE
from export.precision import PRECISIONS, convert_file
from export.repository import (
    CHECKPOINT_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    TRITON_CONFIG,
    RepositoryError,
    sha256_file,
    triton_config,
    version_dir,
)
from export.verify import cpu_session, output_bias, parity
from modelrepo import DEFAULT_RULE, FORMAT, Manifest, SignalRule, write_manifest
from models.checkpoint import BEST_FILE, CONFIG_FILE, load_model
from models.model import PoolingModel

PACKAGES = (
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxconverter-common",
    "numpy",
    "safetensors",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def output_specs(model: PoolingModel) -> list[dict[str, Any]]:
    """Name, dtype and shape of every graph output (``export.onnx_export.output_names``)."""
    config = model.config
    k = config.num_outputs
    shapes: dict[str, list[str | int]] = {key: ["batch", k] for key in HEAD_OUTPUTS.values()}
    shapes["pooled"] = ["batch", config.out_dim]
    shapes["weights"] = ["batch", config.pooling_heads, "tokens"]
    shapes["contributions"] = ["batch", "tokens", k]
    return [
        {"name": name, "dtype": "float32", "shape": shapes[name]} for name in output_names(model)
    ]


def task_spec(model: PoolingModel, metrics: dict[str, Any] | None) -> dict[str, Any]:
    """What the model predicts: ``pool`` (the pooled vector), or its head's task and classes
    (the data set's ``classes``, else the label numbers as strings)."""
    head = model.config.head
    if head.task == "none":
        return {"kind": "pool"}
    if head.task == "classification":
        classes = (metrics or {}).get("classes") or [str(c) for c in range(head.outputs)]
        return {"kind": "classification", "classes": classes}
    return {"kind": "regression", "num_targets": head.outputs}


def signal_rule_of(metrics: dict[str, Any] | None) -> SignalRule:
    """The model's own signal-set rule (chosen on its validation split), else the project's."""
    rule = (metrics or {}).get("signal_rule")
    return SignalRule.from_dict(rule) if isinstance(rule, dict) else DEFAULT_RULE


def graph_opset(model_file: Path) -> int:
    """The default-domain opset a graph imports."""
    graph = onnx.load(str(model_file))
    return int(next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")))


def build_manifest(
    name: str,
    version: int,
    model: PoolingModel,
    run_dir: Path,
    out: Path,
    command: str,
    precision: str = "fp32",
) -> Manifest:
    """Everything a server or a reader needs to know about one exported version (without the
    export's own figures, which :func:`export_run` adds once parity is checked)."""
    config = model.config
    pooling = config.pooling
    adapool = pooling.method == "adapool"
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else None
    bias = output_bias(model)
    training = json.loads((run_dir / CONFIG_FILE).read_text())
    spec = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "task": task_spec(model, metrics),
        "pooling": {
            "method": pooling.method,
            "query": pooling.query if adapool else None,
            "query_index": pooling.query_index if adapool else None,
            "query_indices": list(pooling.query_indices),
            "residual": pooling.use_residual if adapool else None,
            "values": pooling.values if adapool else None,
        },
        "input_dim": config.input_dim,
        "output_dim": config.out_dim,
        "heads": config.pooling_heads,
        "depth": config.depth,
        "width": config.dim,
        "inputs": [
            {
                "name": INPUT_NAMES[0],
                "dtype": "float32",
                "shape": ["batch", "tokens", config.input_dim],
            },
            {"name": INPUT_NAMES[1], "dtype": "bool", "shape": ["batch", "tokens"]},
        ],
        "outputs": output_specs(model),
        "precision": precision,
        "opset": graph_opset(out / MODEL_FILE),
        "sha256": {MODEL_FILE: sha256_file(out / MODEL_FILE)}
        | {
            f"{CHECKPOINT_DIR}/{p.name}": sha256_file(p)
            for p in sorted((out / CHECKPOINT_DIR).iterdir())
        },
        "signal_rule": signal_rule_of(metrics).to_dict(),
        "metrics": metrics,
        "training": training,
        "packages": package_versions(),
        "command": command,
    }
    if bias is not None:
        spec["contribution_bias"] = [float(b) for b in bias]
    return Manifest.from_dict(spec)


def export_graph(model: PoolingModel, model_file: Path, precision: str = "fp32") -> dict[str, Any]:
    """Export ``model`` to ``model_file`` and check it against PyTorch on the parity cases.

    ``precision``: fp32, or fp16 (the fp32 graph converted by ``export.precision``, checked
    against PyTorch's float32 within the fp16 tolerance). Returns the manifest's ``export``
    figures (seconds, size, ONNX Runtime session start-up, parity per case and its tolerance,
    the encoder's attention operator). Raises RepositoryError on a parity failure.
    """
    started = time.perf_counter()
    export_onnx(model, model_file)
    if precision == "fp16":
        convert_file(model_file)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    session = cpu_session(model_file)
    startup = time.perf_counter() - started
    results = parity(session, model)
    bad = [r.name for r in results if not r.ok(precision)]
    if bad:
        raise RepositoryError(f"ONNX Runtime disagrees with PyTorch on: {', '.join(bad)}")
    return {
        "seconds": round(seconds, 2),
        "model_bytes": model_file.stat().st_size,
        "onnxruntime_session_seconds": round(startup, 4),
        "attention": ATTENTION,
        "parity": [
            {
                "case": r.name,
                "max_abs_diff_pooled": r.max_abs_diff_pooled,
                "max_abs_diff_weights": r.max_abs_diff_weights,
            }
            | (
                {
                    "max_abs_diff_head": r.max_abs_diff_head,
                    "contribution_sum_error": r.contribution_sum_error,
                }
                if r.max_abs_diff_head
                else {}
            )
            for r in results
        ],
        "parity_tolerance": TOLERANCE[precision],
        "parity_ok": True,
    }


def export_run(
    run_dir: Path,
    name: str,
    version: int,
    repository: Path,
    command: str,
    precision: str = "fp32",
) -> Manifest:
    """Export ``run_dir``'s best checkpoint at ``precision``; returns the manifest written."""
    target = version_dir(repository, name, version)
    if target.exists():
        raise RepositoryError(f"{target} exists: choose another --version")
    model, _ = load_model(run_dir)
    config_file = target.parent / TRITON_CONFIG
    with tempfile.TemporaryDirectory(dir=repository if repository.exists() else None) as tmp:
        out = Path(tmp) / "version"
        (out / CHECKPOINT_DIR).mkdir(parents=True)
        figures = export_graph(model, out / MODEL_FILE, precision)
        for file in (CONFIG_FILE, BEST_FILE):
            shutil.copyfile(run_dir / file, out / CHECKPOINT_DIR / file)
        manifest = build_manifest(name, version, model, run_dir, out, command, precision)
        manifest = replace(manifest, provenance=replace(manifest.provenance, export=figures))
        if config_file.exists() and config_file.read_text() != triton_config(name, manifest):
            raise RepositoryError(
                f"{config_file} describes a different signature: export under another --name"
            )
        write_manifest(out / MANIFEST_FILE, manifest)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out), target)
    config_file.write_text(triton_config(name, manifest))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a run directory from python -m models.train")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--version", required=True, type=int, help="integer version >= 1")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16: a float16 graph, float32 inputs and outputs (default fp32)",
    )
    args = parser.parse_args(argv)
    command = "python -m export " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    try:
        args.repository.mkdir(parents=True, exist_ok=True)
        manifest = export_run(
            args.checkpoint, args.name, args.version, args.repository, command, args.precision
        )
    except (RepositoryError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    e = manifest.provenance.export
    worst = max(
        max(
            p["max_abs_diff_pooled"],
            p["max_abs_diff_weights"],
            *p.get("max_abs_diff_head", {}).values(),
        )
        for p in e["parity"]
    )
    print(
        f"exported {args.name}/{args.version} ({manifest.precision}): {e['model_bytes']:,} "
        f"bytes, opset "
        f"{manifest.opset}, export {e['seconds']:.1f}s, onnxruntime session start "
        f"{e['onnxruntime_session_seconds'] * 1000:.0f} ms, parity max abs diff {worst:.1e} "
        f"over {len(e['parity'])} cases"
    )
    return 0
