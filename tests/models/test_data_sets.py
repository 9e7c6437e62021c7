"""The data set format: both token forms, both containers, memory mapping, and every refusal."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.data import DataFormatError, ragged, read_dataset, seeded_split, write_dataset


def dense(seed: int = 0, sets: int = 12, n: int = 7, d: int = 5) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, n + 1, size=sets)
    lengths[0] = n
    signal = np.arange(n)[None, :] < np.minimum(lengths, 2)[:, None]
    return {
        "embeddings": rng.standard_normal((sets, n, d)).astype(np.float32),
        "lengths": lengths,
        "labels": np.arange(sets) % 3,
        "classes": np.array(["cat", "dog", "emu"]),
        "signal_mask": signal,
    }


@pytest.mark.parametrize("container", ["file.npz", "folder"])
def test_dense_round_trip_is_memory_mapped(tmp_path: Path, container: str) -> None:
    arrays = dense()
    sets = read_dataset(write_dataset(tmp_path / container, **arrays))
    assert isinstance(sets.embeddings, np.memmap)  # nothing read until a batch asks
    assert (len(sets), sets.dim, sets.task, sets.num_outputs) == (12, 5, "classification", 3)
    assert sets.classes == ("cat", "dog", "emu")
    batch = sets.batch(np.array([3, 0]))
    n3 = int(arrays["lengths"][3])
    assert batch.x.shape == (2, 7, 5) and batch.attention_mask.sum(1).tolist() == [n3, 7]
    np.testing.assert_array_equal(batch.x[1], arrays["embeddings"][0])
    assert (batch.x[0, n3:] == 0).all()  # padding is zeroed, whatever the file held there
    np.testing.assert_array_equal(sets.target(np.array([3, 0])), [0, 0])
    assert batch.signal_mask is not None and batch.signal_mask[1].tolist()[:3] == [1, 1, 0]


def test_flat_ragged_form_and_float16(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pieces = [rng.standard_normal((n, 4)).astype(np.float16) for n in (3, 1, 6, 2)]
    tokens, offsets = ragged(pieces)
    path = write_dataset(
        tmp_path / "flat.npz",
        tokens=tokens,
        offsets=offsets,
        targets=rng.standard_normal((4, 2)),
        signal_mask=np.arange(len(tokens)) % 2 == 0,
    )
    sets = read_dataset(path)
    assert (sets.task, sets.num_outputs, sets.lengths.tolist()) == ("regression", 2, [3, 1, 6, 2])
    batch = sets.batch(np.array([2, 1]))
    assert batch.x.dtype == np.float32 and batch.x.shape == (2, 6, 4)
    np.testing.assert_array_equal(batch.x[0], pieces[2].astype(np.float32))
    assert batch.attention_mask.sum(1).tolist() == [6, 1]
    np.testing.assert_array_equal(batch.signal_mask[0], (np.arange(4, 10) % 2 == 0))


def test_a_dense_batch_is_trimmed_to_its_longest_set(tmp_path: Path) -> None:
    arrays = dense()
    arrays["lengths"][1:] = 2
    sets = read_dataset(write_dataset(tmp_path / "d.npz", **arrays))
    assert sets.batch(np.array([4, 5])).x.shape == (2, 2, 5)


def test_attention_mask_form_and_no_mask(tmp_path: Path) -> None:
    arrays = dense()
    lengths = arrays.pop("lengths")
    mask = np.arange(7)[None, :] < lengths[:, None]
    mask[0] = [False, True] * 3 + [True]  # padding in the middle is allowed
    arrays["signal_mask"] &= mask
    sets = read_dataset(write_dataset(tmp_path / "m.npz", attention_mask=mask, **arrays))
    assert sets.lengths[0] == 4 and sets.batch(np.array([0])).attention_mask[0].tolist() == (
        mask[0].tolist()
    )
    del arrays["signal_mask"]
    full = read_dataset(write_dataset(tmp_path / "full.npz", **arrays))
    assert full.lengths.tolist() == [7] * 12


def test_compressed_npz_is_read_into_memory(tmp_path: Path) -> None:
    arrays = dense()
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    sets = read_dataset(tmp_path / "c.npz")
    assert not isinstance(sets.embeddings, np.memmap) and len(sets) == 12


def test_seeded_split_is_80_10_10_and_seeded() -> None:
    split = seeded_split(100, seed=3)
    assert np.bincount(split).tolist() == [80, 10, 10]
    assert (seeded_split(100, seed=3) == split).all() and (seeded_split(100, seed=4) != split).any()
    assert np.bincount(seeded_split(5, seed=0)).tolist() == [3, 1, 1]


def _bad(**changes: Any) -> dict[str, Any]:
    arrays = dense()
    for name, value in changes.items():
        if value is None:
            arrays.pop(name)
        else:
            arrays[name] = value
    return arrays


def _nan_in_real_token() -> dict[str, Any]:
    arrays = dense()
    arrays["embeddings"][4, 0, 2] = np.nan
    return arrays


def _nan_in_padding_only() -> dict[str, Any]:
    arrays = dense()
    arrays["lengths"][4] = 1
    arrays["signal_mask"][4] = [True] + [False] * 6
    arrays["embeddings"][4, 3, 2] = np.inf
    return arrays


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "NaN in a real token": (
        _nan_in_real_token(),
        r"embeddings: contains NaN or Inf in a real token \(set 4, token 0\)",
    ),
    "lengths disagree with S": (_bad(lengths=np.ones(5, int)), "lengths: has 5 entries for 12"),
    "length beyond N": (_bad(lengths=np.full(12, 8)), "lengths: set 0 has length 8 > N = 7"),
    "a set with no real token": (
        _bad(lengths=np.r_[7, 0, np.ones(10, int)]),
        "lengths: set 1 has no real token",
    ),
    "label out of range": (
        _bad(labels=np.r_[np.zeros(11, int), 3]),
        "labels: set 11 has label 3, out of range for 3 classes",
    ),
    "negative label": (_bad(labels=np.r_[-1, np.zeros(11, int)]), "labels: set 0 has label -1"),
    "float labels": (_bad(labels=np.zeros(12)), "labels: must be an integer array"),
    "one class only": (
        _bad(labels=np.zeros(12, int), classes=None),
        "labels: every set has label 0: classification needs 2",
    ),
    "two targets": (_bad(targets=np.zeros((12, 1))), "labels: give exactly one target.*not both"),
    "no target": (
        _bad(labels=None, classes=None),
        "labels: give exactly one target.*found neither",
    ),
    "targets of rank 1": (
        _bad(labels=None, classes=None, targets=np.zeros(12)),
        r"targets: must be \[S, T\].*targets\[:, None\]",
    ),
    "NaN target": (
        _bad(labels=None, classes=None, targets=np.r_[[[0.0]] * 11, [[np.nan]]]),
        r"targets: contains NaN or Inf \(set 11",
    ),
    "misspelled array": (_bad(lables=np.zeros(12, int)), "lables: unknown array; did you mean"),
    "int embeddings": (_bad(embeddings=np.zeros((12, 7, 5), int)), "embeddings: must be float32"),
    "signal on padding": (
        _bad(signal_mask=np.ones((12, 7), bool)),
        "signal_mask: marks padding as signal",
    ),
    "signal mask shape": (
        _bad(signal_mask=np.ones((12, 6), bool)),
        r"signal_mask: shape \[12, 6\] disagrees",
    ),
    "lengths and mask": (
        _bad(attention_mask=np.ones((12, 7), bool)),
        "lengths: give lengths or attention_mask, not both",
    ),
    "both token forms": (
        _bad(tokens=np.zeros((3, 5), np.float32), offsets=np.array([0, 3])),
        "embeddings: give either embeddings.*not both",
    ),
    "split value": (_bad(split=np.r_[0, 3, np.ones(10, int)]), "split: set 1 has split 3"),
    "empty test split": (
        _bad(split=np.r_[np.zeros(6, int), np.ones(6, int)]),
        "split: no set is in test",
    ),
    "duplicate class": (_bad(classes=np.array(["a", "a", "b"])), "classes: holds a name twice"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_refused_naming_the_array(tmp_path: Path, case: str) -> None:
    arrays, message = BAD[case]
    with pytest.raises(DataFormatError, match=message):
        write_dataset(tmp_path / "w.npz", **arrays)
    assert not (tmp_path / "w.npz").exists()  # nothing written
    np.savez(tmp_path / "r.npz", **arrays)  # the reader refuses the same file, naming it
    with pytest.raises(DataFormatError, match=f"r.npz: {message}"):
        read_dataset(tmp_path / "r.npz")


def test_nan_in_padding_is_allowed(tmp_path: Path) -> None:
    assert len(read_dataset(write_dataset(tmp_path / "p.npz", **_nan_in_padding_only()))) == 12


@pytest.mark.parametrize(
    ("tokens", "offsets", "message"),
    [
        (np.zeros((5, 3), np.float32), np.array([0, 2, 4]), "must start at 0 and end at"),
        (np.zeros((5, 3), np.float32), np.array([0, 3, 2, 5]), "offsets: decreases at set 1"),
        (np.zeros((5, 3), np.float32), np.array([0, 0, 5]), "offsets: set 0 has no real token"),
        (np.full((5, 3), np.inf, np.float32), np.array([0, 2, 5]), r"token 0, in set 0"),
    ],
)
def test_bad_flat_forms(tmp_path: Path, tokens: Any, offsets: Any, message: str) -> None:
    with pytest.raises(DataFormatError, match=message):
        write_dataset(tmp_path / "f.npz", tokens=tokens, offsets=offsets, labels=np.array([0, 1]))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="no such file"):
        read_dataset(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match=r"not a \.npz file"):
        read_dataset(tmp_path / "junk.npz")
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as z, z.open("labels.npy", "w") as f:
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match=r"labels: .*Python objects"):
        read_dataset(tmp_path / "obj.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="found none"):
        read_dataset(tmp_path / "empty")
