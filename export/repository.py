"""Writing a model repository laid out like Triton's, plus our manifest.

The layout and the manifest are :mod:`modelrepo`'s (shared with the service); this module adds
what only the writer needs: name and version checks, checksums and Triton's ``config.pbtxt``.
Versions are positive integers, as Triton requires.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from modelrepo import Manifest, TensorSpec
from modelrepo.layout import (
    CHECKPOINT_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    TRITON_CONFIG,
    VersionDir,
    parse_version,
    scan_versions,
)

__all__ = [
    "CHECKPOINT_DIR",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "TRITON_CONFIG",
    "RepositoryError",
    "VersionDir",
    "check_name",
    "check_version",
    "find_versions",
    "sha256_file",
    "triton_config",
    "version_dir",
]
# Model names travel in URLs and file paths: keep them to a safe alphabet.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bool": "TYPE_BOOL",
    "int64": "TYPE_INT64",
}


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


def version_dir(repository: Path, name: str, version: int) -> Path:
    return repository / check_name(name) / str(check_version(version))


def find_versions(path: Path) -> list[VersionDir]:
    """Every model version under ``path``: a repository, one model's folder or one version's.

    Raises RepositoryError for a version folder name that is not a version, and for two folders
    naming one version (``01`` beside ``1``).
    """
    path = Path(path)
    if (path / MODEL_FILE).exists() or (path / MANIFEST_FILE).exists():
        version = parse_version(path.name)
        if version is None:
            raise RepositoryError(f"{path}: a version folder is named by an integer >= 1")
        return [VersionDir(path.parent.name, version, path)]
    is_model = any(parse_version(p.name) for p in path.iterdir() if p.is_dir())
    scan = scan_versions(path.parent, [path.name]) if is_model else scan_versions(path)
    if scan.problems:
        raise RepositoryError("; ".join(p.message for p in scan.problems))
    return scan.versions


def repository_tool(
    prog: str, description: str | None, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, str]:
    """Arguments of a tool that updates a repository's versions in place (``repository``,
    ``--dry-run``), and the command line to record in the manifests it changes."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("repository", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="only list what would change")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    return args, f"python -m {prog} " + " ".join(shlex.quote(a) for a in given)


def versions_tool(
    prog: str, description: str | None, argv: Sequence[str] | None
) -> list[VersionDir]:
    """The versions a read-only tool was pointed at (a repository, a model folder or a version
    folder); exits with status 1 and a message when there are none."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("path", type=Path, help="a repository, a model folder or a version folder")
    path = parser.parse_args(argv).path
    try:
        versions = find_versions(path)
    except RepositoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if not versions:
        print(f"error: no model versions under {path}", file=sys.stderr)
        raise SystemExit(1)
    return versions


def _dims(tensor: TensorSpec) -> str:
    """Triton's dims: without the batch axis, a named (variable) axis as -1."""
    return ", ".join(str(d) if isinstance(d, int) else "-1" for d in tensor.shape[1:])


def _tensor_lines(tensors: tuple[TensorSpec, ...]) -> str:
    lines = [
        f'  {{ name: "{t.name}" data_type: {TRITON_TYPES[t.dtype]} dims: [ {_dims(t)} ] }}'
        for t in tensors
    ]
    return ",\n".join(lines) + "\n"


def triton_config(name: str, manifest: Manifest, max_batch_size: int = 64) -> str:
    """Triton's config.pbtxt for the ONNX Runtime backend, from the manifest's tensors.

    The batch axis is Triton's (``max_batch_size`` > 0 lets its dynamic batcher join requests
    of equal token count); tokens stay a variable dim (-1).
    """
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        "input [\n" + _tensor_lines(manifest.inputs) + "]\n"
        "output [\n" + _tensor_lines(manifest.outputs) + "]\n"
        "version_policy: { all { } }\n"
        "dynamic_batching { max_queue_delay_microseconds: 1000 }\n"
    )
