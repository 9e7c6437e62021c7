"""Reading and writing data sets: a ``.npz`` file or a folder of ``.npy`` files, memory-mapped.

``read_dataset`` memory-maps every array (members of an uncompressed ``.npz`` too, at their
offset in the ZIP file) and validates them; ``write_dataset`` validates, then writes atomically.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from models.data.sets import DataFormatError, TokenSets
from models.data.validate import fail, validate

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a ZIP entry's local file header


def _memmap_npy(path: Path, offset: int) -> np.ndarray:
    """Memory-map the .npy array stored at byte ``offset`` of ``path`` (a file or a ZIP member)."""
    with path.open("rb") as f:
        f.seek(offset)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        start = f.tell()
    if dtype.hasobject:
        raise DataFormatError("holds Python objects; use numeric, bool or str arrays")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(
        path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C"
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataFormatError(f"{path}: not a .npz file ({exc})") from exc
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with path.open("rb") as f:
                    f.seek(info.header_offset)
                    header = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
                data_start = info.header_offset + _LOCAL_HEADER.size + header[-2] + header[-1]
                try:
                    arrays[name] = _memmap_npy(path, data_start)
                except (ValueError, DataFormatError) as exc:
                    raise fail(name, f"is not a readable .npy array ({exc})") from exc
            else:  # a compressed member cannot be memory-mapped: it is read into memory
                with archive.open(info) as f:
                    try:
                        arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
                    except ValueError as exc:
                        raise fail(name, f"is not a readable .npy array ({exc})") from exc
    return arrays


def _read_folder(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for file in sorted(path.glob("*.npy")):
        try:
            arrays[file.stem] = np.load(file, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise fail(file.stem, f"is not a readable .npy array ({exc})") from exc
    if not arrays:
        raise DataFormatError(f"{path}: a data set folder holds .npy files; found none")
    return arrays


def read_dataset(path: str | Path) -> TokenSets:
    """Read and validate a data set: a ``.npz`` file or a folder of ``.npy`` files.

    Arrays are memory-mapped (members of a compressed ``.npz`` are read into memory instead).

    Raises:
        DataFormatError: the file is missing or invalid; the message names the array.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: no such file or folder")
    arrays = _read_folder(path) if path.is_dir() else _read_npz(path)
    try:
        return validate(arrays)
    except DataFormatError as exc:
        raise DataFormatError(f"{path}: {exc}") from None


def ragged(sets: list[NDArray[np.floating]]) -> tuple[NDArray[np.floating], NDArray[np.int64]]:
    """Token sets of different lengths ([n_s, D] each) as the flat form: tokens, offsets."""
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in sets])
    return np.concatenate(sets, axis=0), offsets


def write_dataset(path: str | Path, **arrays: np.ndarray | list[str] | tuple[str, ...]) -> Path:
    """Validate ``arrays`` (names as in the module docstring) and write them to ``path``.

    ``path`` ending in ``.npz`` gets one uncompressed ``.npz`` (memory-mappable); any other path
    a folder of ``.npy`` files. The file appears whole or not at all. Returns ``path``.

    Raises:
        DataFormatError: the arrays are invalid (nothing is written).
    """
    path = Path(path)
    plain = {name: np.asarray(a) for name, a in arrays.items()}
    if "classes" in plain:
        plain["classes"] = plain["classes"].astype(str)
    validate(plain)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        if path.suffix == ".npz":
            with (tmp / "data.npz").open("wb") as f:
                np.savez(f, **plain)  # type: ignore[arg-type]
            os.replace(tmp / "data.npz", path)
        else:
            for name, a in plain.items():
                np.save(tmp / f"{name}.npy", a, allow_pickle=False)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
