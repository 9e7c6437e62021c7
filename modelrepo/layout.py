"""Where a repository's model versions are, and which folder names count as versions.

A version folder sits at ``<repository>/<name>/<version>/`` and holds a ``manifest.json`` or a
``model.onnx``. Its name must be ASCII decimal digits naming an integer >= 1 (as Triton requires):
``str.isdigit()`` also accepts a superscript two or an Arabic-Indic one, which ``int()`` refuses
or silently reads as another number, so neither is a version. Two folders naming the same
integer (``01`` beside ``1``) are an error that names both: neither is served. Anything else is
ignored, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_DIR = "checkpoint"
TRITON_CONFIG = "config.pbtxt"
VERSION_NAME = re.compile(r"[0-9]{1,18}", re.ASCII)  # fullmatch; 18 digits fit an int64


@dataclass(frozen=True)
class VersionDir:
    """One version folder on disk."""

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

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class LayoutProblem:
    """A version that the folders make unservable (two folders for one version)."""

    name: str
    version: int
    paths: tuple[Path, ...]
    message: str


@dataclass
class Scan:
    """What :func:`scan_versions` found."""

    versions: list[VersionDir] = field(default_factory=list)  # by name, then version
    problems: list[LayoutProblem] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # folder, why


def parse_version(folder_name: str) -> int | None:
    """The version a folder name stands for, or None if it is not a version folder's name."""
    if not VERSION_NAME.fullmatch(folder_name):
        return None
    version = int(folder_name)
    return version if version >= 1 else None


def scan_versions(repository: Path, names: Collection[str] = ()) -> Scan:
    """Every version folder under ``repository`` (only models in ``names``, when given)."""
    scan = Scan()
    by_version: dict[tuple[str, int], list[Path]] = {}
    candidates = {f.parent for f in repository.glob(f"*/*/{MANIFEST_FILE}")}
    candidates |= {f.parent for f in repository.glob(f"*/*/{MODEL_FILE}")}
    for folder in sorted(candidates):
        name = folder.parent.name
        if names and name not in names:
            continue
        version = parse_version(folder.name)
        if version is None:
            scan.ignored.append(
                (folder, "not a version folder: versions are ASCII digits naming an integer >= 1")
            )
            continue
        by_version.setdefault((name, version), []).append(folder)
    for (name, version), folders in sorted(by_version.items()):
        if len(folders) > 1:
            listed = " and ".join(f"{f.name!r}" for f in folders)
            scan.problems.append(
                LayoutProblem(
                    name,
                    version,
                    tuple(folders),
                    f"version folders {listed} of model {name!r} both name version {version}: "
                    "rename or remove one",
                )
            )
            continue
        scan.versions.append(VersionDir(name, version, folders[0]))
    return scan
