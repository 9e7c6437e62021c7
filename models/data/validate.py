"""Validation of a data set's arrays (:mod:`models.data.sets` describes the format).

Every check names the array and the problem; NaN/Inf scans go in chunks, so a memory-mapped
set larger than memory is checked without being loaded.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from models.data.sets import ARRAYS, SPLIT_NAMES, DataFormatError, TokenSets

_CHECK_CHUNK = 1 << 24  # values scanned at once for NaN/Inf (64 MiB of float32)


def fail(array: str, problem: str) -> DataFormatError:
    return DataFormatError(f"{array}: {problem}")


def _describe(a: np.ndarray) -> str:
    return f"{a.dtype} {list(a.shape)}"


def _require_int(name: str, a: np.ndarray, ndim: int) -> NDArray[np.int64]:
    if a.dtype.kind not in "iu" or a.ndim != ndim:
        raise fail(name, f"must be an integer array of rank {ndim}, got {_describe(a)}")
    return a


def _require_bool(name: str, a: np.ndarray, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    if a.dtype != np.bool_:
        raise fail(name, f"must be bool, got {_describe(a)}")
    if a.shape != shape:
        raise fail(name, f"shape {list(a.shape)} disagrees with the tokens' {list(shape)}")
    return a


def _require_float(name: str, a: np.ndarray, allowed: str) -> None:
    if a.dtype.name not in allowed.split():
        raise fail(name, f"must be {' or '.join(allowed.split())}, got {_describe(a)}")


class _PrefixMask:
    """A (S, N) prefix mask from lengths, built per slice (never the whole array at once)."""

    def __init__(self, lengths: NDArray[np.int64], n: int) -> None:
        self.lengths, self.n = lengths, n

    def __getitem__(self, rows: slice) -> NDArray[np.bool_]:
        mask: NDArray[np.bool_] = np.arange(self.n)[None, :] < self.lengths[rows][:, None]
        return mask


Mask = NDArray[np.bool_] | _PrefixMask


def _first_bad_row(a: np.ndarray, mask: Mask | None = None) -> tuple[int, int] | None:
    """The first (row, column) of ``a`` (rank 2 or 3) holding NaN or Inf, scanned in chunks.

    For rank 3 a column is a token (any bad feature counts) and only columns where ``mask`` is
    True are scanned; for rank 2 the column is the feature.
    """
    rows_per_chunk = max(1, _CHECK_CHUNK // max(1, int(np.prod(a.shape[1:]))))
    for start in range(0, len(a), rows_per_chunk):
        stop = min(len(a), start + rows_per_chunk)
        bad = ~np.isfinite(np.asarray(a[start:stop]))
        if bad.ndim == 3:
            bad = bad.any(axis=-1)
            if mask is not None:
                bad &= np.asarray(mask[start:stop])
        hits = np.argwhere(bad)
        if hits.size:
            return start + int(hits[0][0]), int(hits[0][1])
    return None


def _lengths_from(arrays: Mapping[str, np.ndarray]) -> tuple[NDArray[np.int64], int]:
    """Per-set real-token counts and S, from whichever token form the arrays use."""
    dense, flat = "embeddings" in arrays, "tokens" in arrays or "offsets" in arrays
    if dense == flat:
        raise fail(
            "embeddings",
            "give either embeddings [S, N, D] or tokens [total, D] + offsets [S + 1], "
            + ("not both" if dense else "found neither"),
        )
    if dense:
        emb = arrays["embeddings"]
        _require_float("embeddings", emb, "float32 float16")
        if emb.ndim != 3:
            raise fail("embeddings", f"must be [S, N, D], got {_describe(emb)}")
        S, N, D = emb.shape
        if S == 0 or N == 0 or D == 0:
            raise fail("embeddings", f"has an empty axis: {list(emb.shape)}")
        if "offsets" in arrays:
            raise fail("offsets", "belongs to the flat form (tokens); this file has embeddings")
        if "lengths" in arrays and "attention_mask" in arrays:
            raise fail("lengths", "give lengths or attention_mask, not both")
        if "attention_mask" in arrays:
            mask = _require_bool("attention_mask", arrays["attention_mask"], (S, N))
            lengths = np.asarray(mask).sum(axis=1).astype(np.int64)
        elif "lengths" in arrays:
            lengths = _require_int("lengths", arrays["lengths"], 1).astype(np.int64)
            if len(lengths) != S:
                raise fail("lengths", f"has {len(lengths)} entries for {S} sets (embeddings)")
            too_long = np.flatnonzero(lengths > N)
            if too_long.size:
                s = int(too_long[0])
                raise fail("lengths", f"set {s} has length {lengths[s]} > N = {N} (embeddings)")
        else:
            lengths = np.full(S, N, dtype=np.int64)
        return lengths, S
    for name in ("tokens", "offsets"):
        if name not in arrays:
            raise fail(name, "the flat form needs both tokens [total, D] and offsets [S + 1]")
    for name in ("lengths", "attention_mask"):
        if name in arrays:
            raise fail(name, "belongs to the dense form; in the flat form offsets give lengths")
    tokens = arrays["tokens"]
    _require_float("tokens", tokens, "float32 float16")
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise fail("tokens", f"must be [total, D], got {_describe(tokens)}")
    offsets = _require_int("offsets", arrays["offsets"], 1).astype(np.int64)
    if len(offsets) < 2:
        raise fail("offsets", f"needs S + 1 >= 2 entries, got {len(offsets)}")
    if offsets[0] != 0 or offsets[-1] != len(tokens):
        raise fail(
            "offsets",
            f"must start at 0 and end at len(tokens) = {len(tokens)}, "
            f"got {offsets[0]} ... {offsets[-1]}",
        )
    lengths = np.diff(offsets)
    if (lengths < 0).any():
        raise fail("offsets", f"decreases at set {int(np.flatnonzero(lengths < 0)[0])}")
    return lengths, len(lengths)


def _check_target(arrays: Mapping[str, np.ndarray], num_sets: int) -> None:
    has_labels, has_targets = "labels" in arrays, "targets" in arrays
    if has_labels == has_targets:
        raise fail(
            "labels",
            "give exactly one target: labels [S] (classification) or targets [S, T] "
            "(regression), " + ("not both" if has_labels else "found neither"),
        )
    if has_targets:
        targets = arrays["targets"]
        _require_float("targets", targets, "float16 float32 float64")
        if targets.ndim != 2 or targets.shape[0] != num_sets or targets.shape[1] == 0:
            raise fail(
                "targets",
                f"must be [S, T] with S = {num_sets}, got {_describe(targets)} "
                "(one target per set: targets[:, None])",
            )
        bad = _first_bad_row(targets)
        if bad is not None:
            raise fail("targets", f"contains NaN or Inf (set {bad[0]}, target {bad[1]})")
        if "classes" in arrays:
            raise fail("classes", "names the labels of a classification set; this has targets")
        return
    labels = _require_int("labels", arrays["labels"], 1)
    if len(labels) != num_sets:
        raise fail("labels", f"has {len(labels)} entries for {num_sets} sets")
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise fail("labels", f"set {int(np.argmin(labels))} has label {low} < 0")
    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.dtype.kind != "U" or classes.ndim != 1:
            raise fail("classes", f"must be a str array [C], got {_describe(classes)}")
        if len(classes) < 2:
            raise fail("classes", f"needs at least 2 classes, got {len(classes)}")
        if len(set(classes.tolist())) != len(classes):
            raise fail("classes", "holds a name twice")
        if high >= len(classes):
            s = int(np.argmax(labels))
            raise fail(
                "labels", f"set {s} has label {high}, out of range for {len(classes)} classes"
            )
    elif high < 1:
        raise fail("labels", f"every set has label {high}: classification needs 2 classes or more")


def _check_signal(arrays: Mapping[str, np.ndarray], mask_shape: tuple[int, ...]) -> None:
    if "signal_mask" not in arrays:
        return
    signal = _require_bool("signal_mask", arrays["signal_mask"], mask_shape)
    if "attention_mask" in arrays:
        padded = np.argwhere(np.asarray(signal) & ~np.asarray(arrays["attention_mask"]))
        if padded.size:
            s, i = padded[0]
            raise fail("signal_mask", f"marks padding as signal (set {s}, token {i})")
    elif "lengths" in arrays:
        n = mask_shape[1]
        beyond = np.asarray(signal) & ~(np.arange(n)[None, :] < arrays["lengths"][:, None])
        if beyond.any():
            s, i = np.argwhere(beyond)[0]
            raise fail("signal_mask", f"marks padding as signal (set {s}, token {i})")


def _check_split(arrays: Mapping[str, np.ndarray], num_sets: int) -> None:
    if "split" not in arrays:
        return
    split = _require_int("split", arrays["split"], 1)
    if len(split) != num_sets:
        raise fail("split", f"has {len(split)} entries for {num_sets} sets")
    bad = np.flatnonzero((split < 0) | (split > 2))
    if bad.size:
        s = int(bad[0])
        raise fail("split", f"set {s} has split {split[s]}: use 0 train, 1 val, 2 test")
    for value, name in enumerate(SPLIT_NAMES):
        if not (split == value).any():
            raise fail("split", f"no set is in {name} (split == {value})")


def validate(arrays: Mapping[str, np.ndarray]) -> TokenSets:
    """Check a data set's arrays (in memory or memory-mapped) and wrap them.

    Raises:
        DataFormatError: naming the array and the problem.
    """
    unknown = sorted(set(arrays) - set(ARRAYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], ARRAYS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise fail(unknown[0], f"unknown array{hint} (known: {', '.join(ARRAYS)})")
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise fail(name, "holds Python objects; use numeric, bool or str arrays")
    lengths, S = _lengths_from(arrays)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise fail(
            "attention_mask"
            if "attention_mask" in arrays
            else "lengths"
            if "lengths" in arrays
            else "offsets",
            f"set {int(empty[0])} has no real token ({empty.size} such sets)",
        )
    dense = "embeddings" in arrays
    if dense:
        mask: Mask | None = arrays.get("attention_mask")
        if mask is None and "lengths" in arrays:
            mask = _PrefixMask(lengths, arrays["embeddings"].shape[1])
        bad = _first_bad_row(arrays["embeddings"], mask)
        if bad is not None:
            raise fail(
                "embeddings", f"contains NaN or Inf in a real token (set {bad[0]}, token {bad[1]})"
            )
        _check_signal(arrays, arrays["embeddings"].shape[:2])
    else:
        bad = _first_bad_row(arrays["tokens"])
        if bad is not None:
            s = int(np.searchsorted(arrays["offsets"], bad[0], side="right")) - 1
            raise fail("tokens", f"contains NaN or Inf (token {bad[0]}, in set {s})")
        _check_signal(arrays, (len(arrays["tokens"]),))
    _check_target(arrays, S)
    _check_split(arrays, S)
    targets = arrays.get("targets")
    classes = arrays.get("classes")
    return TokenSets(
        embeddings=arrays.get("embeddings"),
        attention_mask=arrays.get("attention_mask"),
        tokens=arrays.get("tokens"),
        offsets=None if dense else np.asarray(arrays["offsets"], dtype=np.int64),
        lengths=lengths,
        labels=np.asarray(arrays["labels"], dtype=np.int64) if "labels" in arrays else None,
        classes=tuple(str(c) for c in classes.tolist()) if classes is not None else None,
        targets=targets,
        signal_mask=arrays.get("signal_mask"),
        split=np.asarray(arrays["split"], dtype=np.int64) if "split" in arrays else None,
    )
