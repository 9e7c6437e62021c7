"""The manifest of one model version: typed, versioned, validated field by field.

``export`` builds a :class:`Manifest` and writes it with :func:`write_manifest`; the service and
``export.verify`` read it with :func:`read_manifest`, which checks every field they use and raises
:class:`ManifestError` naming the file and the field, so that a broken manifest makes its version
not ready with that reason instead of failing requests later.

Format 2 (written now) adds ``task`` and a structured ``signal_rule`` to format 1, which is still
read (a format-1 manifest describes a pooling-only model and states its rule in words).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from modelrepo.signal_rules import RuleError, SignalRule

FORMAT = 2
READABLE_FORMATS = (1, 2)
Method = Literal["avg", "max", "cls", "adapool"]
Query = Literal["token", "mean", "indices", "learned"]
Values = Literal["encoder", "inputs"]
TaskKind = Literal["pool", "classification", "regression"]
Precision = Literal["fp32", "fp16"]
DTYPES = ("float32", "float16", "bool", "int64")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Outputs a task adds to pooled and weights, and their shapes' last axis.
TASK_OUTPUT = {"classification": "logits", "regression": "prediction"}


class ManifestError(ValueError):
    """A manifest that cannot be served: names the file (when known) and the field."""

    def __init__(self, field: str, problem: str, file: Path | None = None) -> None:
        self.field, self.problem, self.file = field, problem, file
        where = f"{file}: " if file else ""
        super().__init__(f"{where}field {field!r}: {problem}")

    def in_file(self, file: Path) -> ManifestError:
        return ManifestError(self.field, self.problem, file)


class _Fields:
    """Typed access to one JSON object, every problem reported with its field's path."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(path or "(top level)", f"must be an object, got {_kind(data)}")
        self.data: dict[str, Any] = data
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, default: Any = ...) -> Any:
        if key not in self.data or (self.data[key] is None and default is not ...):
            if default is ...:
                raise ManifestError(self.where(key), "is missing")
            return default
        return self.data[key]

    def integer(self, key: str, minimum: int = 0, default: Any = ...) -> Any:
        value = self.get(key, default)
        if value is default and default is not ...:
            return value
        if type(value) is not int or value < minimum:
            raise ManifestError(self.where(key), f"must be an integer >= {minimum}, got {value!r}")
        return value

    def number(self, key: str, default: Any = ...) -> Any:
        value = self.get(key, default)
        if value is default and default is not ...:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ManifestError(self.where(key), f"must be a number, got {value!r}")
        return float(value)

    def text(self, key: str, default: Any = ...) -> Any:
        value = self.get(key, default)
        if value is default and default is not ...:
            return value
        if not isinstance(value, str):
            raise ManifestError(self.where(key), f"must be a string, got {_kind(value)}")
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: Any = ...) -> Any:
        value = self.get(key, default)
        if value is default and default is not ...:
            return value
        if value not in allowed:
            raise ManifestError(self.where(key), f"must be one of {list(allowed)}, got {value!r}")
        return value

    def obj(self, key: str) -> _Fields:
        return _Fields(self.get(key), self.where(key))

    def array(self, key: str, default: Any = ...) -> list[Any]:
        value = self.get(key, default)
        if not isinstance(value, list):
            raise ManifestError(self.where(key), f"must be a list, got {_kind(value)}")
        return value

    def mapping(self, key: str, default: Any = ...) -> dict[str, Any]:
        value = self.get(key, default)
        if not isinstance(value, dict):
            raise ManifestError(self.where(key), f"must be an object, got {_kind(value)}")
        return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class PoolingSpec:
    method: Method
    query: Query | None = None  # adapool only
    query_index: int | None = None  # the query token (query "token")
    query_indices: tuple[int, ...] = ()  # query "indices"
    residual: bool | None = None  # adapool only
    values: Values | None = None  # adapool only: "encoder" (the paper) or "inputs" (faithful)

    @property
    def required_tokens(self) -> tuple[int, ...]:
        """Token positions that must be real in every item (the graph does not check)."""
        if self.method != "adapool":
            return ()
        if self.query == "token":
            return (self.query_index or 0,)
        return self.query_indices if self.query == "indices" else ()

    @classmethod
    def parse(cls, f: _Fields) -> PoolingSpec:
        method = f.choice("method", get_args(Method))
        if method != "adapool":
            return cls(method)
        query = f.choice("query", get_args(Query))
        index = f.integer("query_index", default=None)
        indices = f.array("query_indices", default=[])
        if not all(type(i) is int and i >= 0 for i in indices):
            raise ManifestError(f.where("query_indices"), f"must be integers >= 0, got {indices}")
        if query == "token" and index is None:
            raise ManifestError(f.where("query_index"), "is required by query 'token'")
        if query == "indices" and not indices:
            raise ManifestError(f.where("query_indices"), "must not be empty for query 'indices'")
        residual = f.get("residual", None)
        if residual is not None and not isinstance(residual, bool):
            raise ManifestError(f.where("residual"), f"must be true, false or null: {residual!r}")
        values = f.choice("values", get_args(Values), default="encoder")
        return cls(method, query, index, tuple(indices), residual, values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "query": self.query,
            "query_index": self.query_index,
            "query_indices": list(self.query_indices),
            "residual": self.residual,
            "values": self.values,
        }


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: a variable axis is named ("batch", "tokens"), a fixed one sized."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def parse(cls, f: _Fields) -> TensorSpec:
        shape = f.array("shape")
        if not all((type(d) is int and d > 0) or (isinstance(d, str) and d) for d in shape):
            raise ManifestError(f.where("shape"), f"axes are sizes > 0 or names, got {shape}")
        return cls(f.text("name"), f.choice("dtype", DTYPES), tuple(shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class TaskSpec:
    """What the model's outputs mean beyond the pooled vector and its weights."""

    kind: TaskKind = "pool"
    classes: tuple[str, ...] = ()  # classification: the label of each logit
    num_targets: int | None = None  # regression: the prediction's size

    @property
    def output(self) -> str | None:
        """The graph output the task adds (logits or prediction), if any."""
        return TASK_OUTPUT.get(self.kind)

    @property
    def output_size(self) -> int | None:
        return len(self.classes) if self.kind == "classification" else self.num_targets

    @classmethod
    def parse(cls, f: _Fields) -> TaskSpec:
        kind = f.choice("kind", get_args(TaskKind))
        if kind == "classification":
            classes = f.array("classes")
            if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
                raise ManifestError(f.where("classes"), "needs at least 2 non-empty strings")
            if len(set(classes)) != len(classes):
                raise ManifestError(f.where("classes"), "has repeated labels")
            return cls(kind, tuple(classes))
        if kind == "regression":
            return cls(kind, num_targets=f.integer("num_targets", minimum=1))
        return cls(kind)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "classification":
            out["classes"] = list(self.classes)
        if self.kind == "regression":
            out["num_targets"] = self.num_targets
        return out


@dataclass(frozen=True)
class WeightQuality:
    """The pooling weights against the true signal tokens on the test split, with chance."""

    signal_mass: float
    signal_mass_chance: float
    f1: float
    f1_chance: float
    rule: str

    @classmethod
    def parse(cls, f: _Fields) -> WeightQuality:
        return cls(
            f.number("signal_mass"),
            f.number("signal_mass_chance"),
            f.number("f1"),
            f.number("f1_chance"),
            f.text("rule"),
        )


SCORES = ("signal_loss", "accuracy", "macro_f1", "auc", "mse", "r2")


@dataclass(frozen=True)
class Metrics:
    """Test metrics: the fields the service reports are typed; the rest is kept as written."""

    task: str
    scores: Mapping[str, float]  # those of SCORES the task has
    k: int | None = None
    snr: float | None = None
    weights: WeightQuality | None = None
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)  # everything, as written

    @classmethod
    def from_dict(cls, data: Any) -> Metrics:
        return cls.parse(_Fields(data, "metrics"))

    @classmethod
    def parse(cls, f: _Fields) -> Metrics:
        scores = {key: f.number(key) for key in SCORES if f.has(key)}
        weights = WeightQuality.parse(f.obj("weights")) if f.has("weights") else None
        return cls(
            f.text("task"),
            scores,
            f.integer("k", default=None),
            f.number("snr", None),
            weights,
            f.data,
        )


@dataclass(frozen=True)
class Provenance:
    """Where the version came from; read and kept, not interpreted by the service."""

    created: str
    command: str
    packages: Mapping[str, str]
    training: Mapping[str, Any]
    export: Mapping[str, Any]
    history: tuple[Mapping[str, Any], ...] = ()  # later changes to the metrics (rescored)
    reexported: tuple[Mapping[str, Any], ...] = ()  # graphs rebuilt from the same checkpoint

    @classmethod
    def parse(cls, f: _Fields) -> Provenance:
        packages = f.mapping("packages", {})
        return cls(
            f.text("created", ""),
            f.text("command", ""),
            {str(k): str(v) for k, v in packages.items()},
            f.mapping("training", {}),
            f.mapping("export", {}),
            tuple(f.array("rescored", [])),
            tuple(f.array("reexported", [])),
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    pooling: PoolingSpec
    input_dim: int
    output_dim: int
    heads: int
    depth: int
    width: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: Precision
    opset: int
    sha256: Mapping[str, str]
    signal_rule: SignalRule
    provenance: Provenance
    task: TaskSpec = TaskSpec()
    metrics: Metrics | None = None
    preferred_batch_tokens: int | None = None  # serving.preferred_batch_tokens: a pinned policy
    format: int = FORMAT
    # With a ``contributions`` output: the constant part of each head output that no token
    # contributes (output = contribution_bias + contributions summed over tokens).
    contribution_bias: tuple[float, ...] = ()

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def expected_tensors(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The graph signature that input_dim, output_dim, heads and the task imply."""
        inputs = (
            TensorSpec("embeddings", "float32", ("batch", "tokens", self.input_dim)),
            TensorSpec("attention_mask", "bool", ("batch", "tokens")),
        )
        outputs = [
            TensorSpec("pooled", "float32", ("batch", self.output_dim)),
            TensorSpec("weights", "float32", ("batch", self.heads, "tokens")),
        ]
        if self.task.output and self.task.output_size:
            outputs.append(
                TensorSpec(self.task.output, "float32", ("batch", self.task.output_size))
            )
        return inputs, tuple(outputs)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate ``data`` (a parsed manifest.json); raises :class:`ManifestError`."""
        f = _Fields(data, "")
        form = f.integer("format", minimum=1)
        if form not in READABLE_FORMATS:
            raise ManifestError("format", f"{form} is not one of {list(READABLE_FORMATS)}")
        if form == 1:
            rule = _rule(f, lambda value: SignalRule.from_definition(str(value)))
            task = TaskSpec()
        else:
            rule = _rule(f, SignalRule.from_dict)
            task = TaskSpec.parse(f.obj("task"))
        sha = f.mapping("sha256")
        for file, digest in sha.items():
            if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                raise ManifestError(f"sha256.{file}", f"must be 64 hex digits, got {digest!r}")
        if "model.onnx" not in sha:
            raise ManifestError("sha256", "has no entry for model.onnx")
        manifest = cls(
            name=f.text("name"),
            version=f.integer("version", minimum=1),
            pooling=PoolingSpec.parse(f.obj("pooling")),
            input_dim=f.integer("input_dim", minimum=1),
            output_dim=f.integer("output_dim", minimum=1),
            heads=f.integer("heads", minimum=1),
            depth=f.integer("depth"),
            width=f.integer("width", minimum=1),
            inputs=_tensors(f, "inputs"),
            outputs=_tensors(f, "outputs"),
            precision=f.choice("precision", get_args(Precision)),
            opset=f.integer("opset", minimum=1),
            sha256=dict(sha),
            signal_rule=rule,
            provenance=Provenance.parse(f),
            task=task,
            metrics=Metrics.parse(f.obj("metrics")) if f.has("metrics") else None,
            preferred_batch_tokens=(
                f.obj("serving").integer("preferred_batch_tokens", minimum=1, default=None)
                if f.has("serving")
                else None
            ),
            format=form,
            contribution_bias=_bias(f),
        )
        manifest._check_signature()
        return manifest

    def _check_signature(self) -> None:
        inputs, outputs = self.expected_tensors()
        if self.inputs != inputs:
            raise ManifestError("inputs", f"must be {[t.to_dict() for t in inputs]}")
        required = outputs if self.task.output else outputs[:2]
        got = {t.name: t for t in self.outputs}
        for tensor in required:
            if got.get(tensor.name) != tensor:
                found = got[tensor.name].to_dict() if tensor.name in got else "nothing"
                raise ManifestError("outputs", f"needs {tensor.to_dict()}, found {found}")

    def to_dict(self) -> dict[str, Any]:
        """The manifest.json object (always the current format)."""
        p = self.provenance
        out: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "created": p.created,
            "task": self.task.to_dict(),
            "pooling": self.pooling.to_dict(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "heads": self.heads,
            "depth": self.depth,
            "width": self.width,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "precision": self.precision,
            "opset": self.opset,
            "sha256": dict(self.sha256),
            "signal_rule": self.signal_rule.to_dict(),
            "metrics": dict(self.metrics.data) if self.metrics else None,
            "training": dict(p.training),
            "packages": dict(p.packages),
            "command": p.command,
            "export": dict(p.export),
        }
        if self.contribution_bias:
            out["contribution_bias"] = list(self.contribution_bias)
        if p.history:
            out["rescored"] = [dict(h) for h in p.history]
        if p.reexported:
            out["reexported"] = [dict(r) for r in p.reexported]
        if self.preferred_batch_tokens is not None:
            out["serving"] = {"preferred_batch_tokens": self.preferred_batch_tokens}
        return out


def _bias(f: _Fields) -> tuple[float, ...]:
    """``contribution_bias``: one number per head output, required by a contributions output."""
    outputs = [o.get("name") for o in f.array("outputs") if isinstance(o, dict)]
    if "contributions" not in outputs:
        return ()
    bias = f.array("contribution_bias")
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bias):
        raise ManifestError("contribution_bias", f"must be numbers, got {bias!r}")
    return tuple(float(b) for b in bias)


def _rule(f: _Fields, parse: Any) -> SignalRule:
    try:
        rule: SignalRule = parse(f.get("signal_rule"))
    except RuleError as exc:
        raise ManifestError("signal_rule", str(exc)) from None
    return rule


def _tensors(f: _Fields, key: str) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec.parse(_Fields(item, f"{key}[{i}]")) for i, item in enumerate(f.array(key))
    )


def read_manifest(path: Path) -> Manifest:
    """Read and validate ``path``; every problem is a :class:`ManifestError` naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError("(file)", f"cannot be read: {exc.strerror or exc}", path) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError("(file)", f"is not valid JSON: {exc}", path) from None
    try:
        return Manifest.from_dict(data)
    except ManifestError as exc:
        raise exc.in_file(path) from None


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write ``manifest`` as indented JSON, atomically (a crash never leaves half a file)."""
    Manifest.from_dict(manifest.to_dict())  # what is written must read back
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    tmp.replace(path)
