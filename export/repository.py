"""A model repository laid out like Triton's, plus our manifest.

    <repository>/<name>/config.pbtxt                  Triton's model config (ONNX Runtime backend)
    <repository>/<name>/<version>/model.onnx          the graph
    <repository>/<name>/<version>/manifest.json       what it is, where it came from, how it scored
    <repository>/<name>/<version>/checkpoint/         the source checkpoint (config.json,
                                                      model.safetensors): parity can be re-checked

Versions are positive integers, as Triton requires.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_DIR = "checkpoint"
TRITON_CONFIG = "config.pbtxt"
MANIFEST_FORMAT = 1
# Model names travel in URLs and file paths: keep them to a safe alphabet.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class RepositoryError(ValueError):
    """The repository, a model name or a version is invalid."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise RepositoryError(
            f"invalid model name {name!r}: use 1-64 of a-z 0-9 . _ -, starting alphanumeric"
        )
    return name


def check_version(version: int) -> int:
    if version < 1:
        raise RepositoryError(f"invalid version {version}: versions are integers >= 1")
    return version


@dataclass(frozen=True)
class ModelVersion:
    """One exported model version on disk."""

    name: str
    version: int
    path: Path

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def manifest_file(self) -> Path:
        return self.path / MANIFEST_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_file.read_text())
        return data


def version_dir(repository: Path, name: str, version: int) -> Path:
    return repository / check_name(name) / str(check_version(version))


def find_versions(path: Path) -> list[ModelVersion]:
    """Every model version under ``path``: a repository, one model's folder or one version's."""
    path = Path(path)
    if (path / MODEL_FILE).exists():
        if not path.name.isdigit():
            raise RepositoryError(f"{path}: a version folder is named by an integer")
        return [ModelVersion(path.parent.name, int(path.name), path)]
    found = []
    for model_file in sorted(path.glob(f"*/{MODEL_FILE}")) + sorted(path.glob(f"*/*/{MODEL_FILE}")):
        version = model_file.parent
        if version.name.isdigit():
            found.append(ModelVersion(version.parent.name, int(version.name), version))
    return sorted(found, key=lambda v: (v.name, v.version))


TRITON_TYPES = {"float32": "TYPE_FP32", "bool": "TYPE_BOOL"}


def _triton_tensors(tensors: list[dict[str, Any]]) -> str:
    """Manifest tensor specs as Triton entries: the batch axis dropped, named axes as -1."""
    entries = []
    for t in tensors:
        dims = ", ".join("-1" if isinstance(d, str) else str(d) for d in t["shape"][1:])
        entries.append(
            f'  {{ name: "{t["name"]}" data_type: {TRITON_TYPES[t["dtype"]]} dims: [ {dims} ] }}'
        )
    return ",\n".join(entries)


def triton_config(name: str, manifest: dict[str, Any], max_batch_size: int = 64) -> str:
    """Triton's config.pbtxt for the ONNX Runtime backend, every manifest input and output.

    The batch axis is Triton's (``max_batch_size`` > 0 lets its dynamic batcher join requests
    of equal token count); tokens stay a variable dim (-1).
    """
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{_triton_tensors(manifest['inputs'])}\n]\n"
        f"output [\n{_triton_tensors(manifest['outputs'])}\n]\n"
        "version_policy: { all { } }\n"
        "dynamic_batching { max_queue_delay_microseconds: 1000 }\n"
    )
