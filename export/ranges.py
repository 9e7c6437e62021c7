"""The input range each exported model answers finitely, and where it overflows beyond it.

    python -m export.ranges model_repository            # every model and version

A finite input can overflow float32 inside a graph: the pooling attention works on the
encoder's residual stream, which is not normalised, so huge inputs reach its projections
(x W_k, x W_v: sums of D products) and its logits (q . k) and turn them into inf; softmax then
gives NaN (inf - inf) for every weight and the pooled vector. For each model this finds, by
bisection on log10 |x| (to 0.01), the largest magnitude M at which each input pattern still
gives finite pooled vectors and weights (8 tokens, the rest N(0, 1)):

- ``one token``: every feature of one token is M;
- ``one value``: one feature of one token is M;
- ``every value``: every feature of every token is M;
- ``every value, random signs``: every value is +M or -M.

The model is safe for |x| up to the smallest of them (``safe``). Past it, the first node of the
graph (ONNX Runtime, optimisations off, every intermediate value an output) whose output is not
finite while its inputs are is reported. Empirical: these patterns, not a proof for every input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from export.repository import versions_tool

TOKENS = 8
FLOAT32_MAX_LOG10 = math.log10(float(np.finfo(np.float32).max))
Pattern = Callable[[NDArray[np.float32], float], None]


def _one_token(x: NDArray[np.float32], m: float) -> None:
    x[0, 3] = m


def _one_value(x: NDArray[np.float32], m: float) -> None:
    x[0, 3, 0] = m


def _every_value(x: NDArray[np.float32], m: float) -> None:
    x[:] = m


def _random_signs(x: NDArray[np.float32], m: float) -> None:
    x[:] = np.where(np.random.default_rng(1).random(x.shape) < 0.5, -m, m)


PATTERNS: dict[str, Pattern] = {
    "one token": _one_token,
    "one value": _one_value,
    "every value": _every_value,
    "every value, random signs": _random_signs,
}


@dataclass(frozen=True)
class Overflow:
    """The first node whose output is not finite while its inputs are."""

    op_type: str
    node: str
    kind: str  # "inf" or "nan"
    largest_input: float


class Probe:
    """One model's graph, every intermediate value an output."""

    def __init__(self, model_file: Path) -> None:
        graph = onnx.load(str(model_file))
        self.nodes = list(graph.graph.node)
        known = {o.name for o in graph.graph.output}
        for node in self.nodes:
            for name in node.output:
                if name and name not in known:
                    graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(
            graph.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.names = [o.name for o in self.session.get_outputs()]
        self.input_dim = int(self.session.get_inputs()[0].shape[2])

    def run(self, pattern: Pattern, magnitude: float) -> dict[str, NDArray[np.generic]]:
        x = np.random.default_rng(0).standard_normal((1, TOKENS, self.input_dim)).astype("f4")
        pattern(x, magnitude)
        mask = np.ones((1, TOKENS), dtype=bool)
        values = self.session.run(None, {"embeddings": x, "attention_mask": mask})
        return dict(zip(self.names, values, strict=True))

    def finite(self, pattern: Pattern, magnitude: float) -> bool:
        out = self.run(pattern, magnitude)
        return bool(np.isfinite(out["pooled"]).all() and np.isfinite(out["weights"]).all())

    def largest_finite(self, pattern: Pattern) -> float:
        """log10 of the largest magnitude still answered finitely (to 0.01)."""
        low, high = 0.0, FLOAT32_MAX_LOG10
        if self.finite(pattern, 10**high):
            return high
        while high - low > 0.01:
            middle = (low + high) / 2
            low, high = (middle, high) if self.finite(pattern, 10**middle) else (low, middle)
        return low

    def overflow(self, pattern: Pattern, magnitude: float) -> Overflow | None:
        out = self.run(pattern, magnitude)

        def bad(name: str) -> bool:
            value = out.get(name)
            return value is not None and value.dtype.kind == "f" and not np.isfinite(value).all()

        for node in self.nodes:
            if any(bad(o) for o in node.output) and not any(bad(i) for i in node.input):
                name = next(o for o in node.output if bad(o))
                floats = [out[i] for i in node.input if i in out and out[i].dtype.kind == "f"]
                largest = max((float(np.abs(v).max()) for v in floats if v.size), default=0.0)
                kind = "nan" if np.isnan(out[name]).any() else "inf"
                return Overflow(node.op_type, node.name, kind, largest)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    versions = versions_tool("export.ranges", __doc__, argv)
    header = " | ".join(PATTERNS)
    print(f"| model | safe: abs(x) up to | {header} | past the smallest: first overflow |")
    print("|---|---:|" + "---:|" * len(PATTERNS) + "---|")
    for version in versions:
        probe = Probe(version.model_file)
        bounds = {name: probe.largest_finite(p) for name, p in PATTERNS.items()}
        worst = min(bounds, key=lambda name: bounds[name])
        where = "none up to float32's largest value"
        if bounds[worst] < FLOAT32_MAX_LOG10:
            found = probe.overflow(PATTERNS[worst], 10 ** min(bounds[worst] + 0.05, 38.5))
            if found is not None:
                where = (
                    f"{worst}: {found.op_type} `{found.node}` gives {found.kind} "
                    f"(largest input {found.largest_input:.1e})"
                )
        cells = " | ".join(f"{10**b:.1e}" for b in bounds.values())
        label = f"{version.name}/{version.version}"
        print(f"| {label} | {10 ** bounds[worst]:.1e} | {cells} | {where} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
