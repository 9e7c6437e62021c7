"""Your own token sets on disk: one format for any encoder's embeddings, read memory-mapped.

A data set is a ``.npz`` file (uncompressed, as ``numpy.savez`` writes it) or a folder of
``.npy`` files, one per array. Reading memory-maps every array, so a set larger than memory
trains: only the sets of a batch are read. Arrays, by name:

- the tokens, in one of two forms:
  - dense: ``embeddings`` float32/float16 [S, N, D], with ``lengths`` int [S] (the first
    ``lengths[s]`` tokens of set s are real) or ``attention_mask`` bool [S, N] (True = a real
    token), or neither (every token real);
  - flat ragged (for sets of very different lengths): ``tokens`` float32/float16 [total, D] and
    ``offsets`` int [S + 1], set s being ``tokens[offsets[s]:offsets[s + 1]]``;
- exactly one target: ``labels`` int [S] in [0, C) for classification, with optional
  ``classes`` str [C] (the label names); or ``targets`` float [S, T] for regression (one
  target: T = 1);
- optional ``signal_mask`` bool, [S, N] (dense) or [total] (flat): which tokens carry the
  signal, to validate the pooling weights as a diagnostic;
- optional ``split`` int [S]: 0 train, 1 validation, 2 test. Without it, training draws a seeded
  80/10/10 split (:func:`seeded_split`).

:func:`models.data.read_dataset` validates everything it will use and refuses a bad file with
:class:`DataFormatError`, whose message names the array and the problem (shapes that disagree,
NaN or Inf in a real token, labels out of range, a set with no real token, an unknown array);
:func:`models.data.write_dataset` runs the same checks before it writes
(:mod:`models.data.validate`, :mod:`models.data.files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

ARRAYS = (
    "embeddings",
    "lengths",
    "attention_mask",
    "tokens",
    "offsets",
    "labels",
    "classes",
    "targets",
    "signal_mask",
    "split",
)
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


class DataFormatError(ValueError):
    """A data set file is invalid; the message names the file, the array and the problem."""


class Batch(NamedTuple):
    """Sets gathered for one model run, padded to the longest.

    Attributes:
        x: (B, n, D) float32 tokens; padding is 0.
        attention_mask: (B, n) bool, True = a real token.
        signal_mask: (B, n) bool, or None when the data set has no signal_mask.
    """

    x: NDArray[np.float32]
    attention_mask: NDArray[np.bool_]
    signal_mask: NDArray[np.bool_] | None


@dataclass(frozen=True)
class TokenSets:
    """A validated data set (arrays memory-mapped when read from disk).

    Exactly one of ``embeddings`` (dense) and ``tokens`` + ``offsets`` (flat) is set, and
    exactly one of ``labels`` and ``targets``. Use :meth:`batch` to gather sets by index.
    """

    embeddings: NDArray[np.floating] | None
    attention_mask: NDArray[np.bool_] | None
    tokens: NDArray[np.floating] | None
    offsets: NDArray[np.int64] | None
    lengths: NDArray[np.int64]
    labels: NDArray[np.int64] | None
    classes: tuple[str, ...] | None
    targets: NDArray[np.floating] | None
    signal_mask: NDArray[np.bool_] | None
    split: NDArray[np.int64] | None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def dim(self) -> int:
        """D, the token dimension."""
        source = self.embeddings if self.embeddings is not None else self.tokens
        assert source is not None
        return int(source.shape[-1])

    @property
    def task(self) -> str:
        """``classification`` (labels) or ``regression`` (targets)."""
        return "classification" if self.labels is not None else "regression"

    @property
    def num_outputs(self) -> int:
        """C classes (classification) or T targets (regression)."""
        if self.labels is not None:
            return len(self.classes) if self.classes is not None else int(self.labels.max()) + 1
        assert self.targets is not None
        return int(self.targets.shape[1])

    def target(self, index: NDArray[np.int64]) -> NDArray[np.int64] | NDArray[np.float32]:
        """Labels (B,) int64 or targets (B, T) float32 of the sets at ``index``."""
        if self.labels is not None:
            return np.asarray(self.labels[index], dtype=np.int64)
        assert self.targets is not None
        return np.asarray(self.targets[index], dtype=np.float32)

    def batch(self, index: NDArray[np.int64]) -> Batch:
        """The sets at ``index`` (B,), padded to the longest of them."""
        index = np.asarray(index, dtype=np.int64)
        if self.embeddings is not None:
            return self._dense_batch(index)
        return self._flat_batch(index)

    def _dense_batch(self, index: NDArray[np.int64]) -> Batch:
        assert self.embeddings is not None
        if self.attention_mask is not None:
            mask = np.asarray(self.attention_mask[index], dtype=bool)
        else:
            n = self.embeddings.shape[1]
            mask = np.arange(n)[None, :] < self.lengths[index][:, None]
        # Trim trailing columns that no set of the batch uses.
        used = np.flatnonzero(mask.any(axis=0))
        width = int(used[-1]) + 1 if used.size else 1
        mask = mask[:, :width]
        x = np.asarray(self.embeddings[index, :width], dtype=np.float32)
        x = np.where(mask[..., None], x, np.float32(0.0))
        signal = None
        if self.signal_mask is not None:
            signal = np.asarray(self.signal_mask[index, :width], dtype=bool) & mask
        return Batch(x, mask, signal)

    def _flat_batch(self, index: NDArray[np.int64]) -> Batch:
        assert self.tokens is not None and self.offsets is not None
        lengths = self.lengths[index]
        width = int(lengths.max())
        x = np.zeros((len(index), width, self.dim), dtype=np.float32)
        mask = np.arange(width)[None, :] < lengths[:, None]
        signal = None if self.signal_mask is None else np.zeros(mask.shape, dtype=bool)
        for row, s in enumerate(index):
            start, stop = int(self.offsets[s]), int(self.offsets[s + 1])
            x[row, : stop - start] = self.tokens[start:stop]
            if signal is not None and self.signal_mask is not None:
                signal[row, : stop - start] = self.signal_mask[start:stop]
        return Batch(x, mask, signal)


def seeded_split(
    num_sets: int, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> NDArray[np.int64]:
    """A split array (0 train, 1 val, 2 test) drawn from ``seed``: (S,) int64.

    Validation and test each get at least one set (so S >= 3).
    """
    if num_sets < 3:
        raise DataFormatError(f"split: {num_sets} sets cannot fill train, val and test")
    order = np.random.default_rng(seed).permutation(num_sets)
    n_val = max(1, round(fractions[1] * num_sets))
    n_test = max(1, round(fractions[2] * num_sets))
    split = np.zeros(num_sets, dtype=np.int64)
    split[order[:n_val]] = 1
    split[order[n_val : n_val + n_test]] = 2
    return split
