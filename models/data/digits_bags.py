"""Digits bags: a real-data multiple-instance task from scikit-learn's bundled digits.

After Ilse, Tomczak and Welling's MNIST-bags ("Attention-based Deep Multiple Instance
Learning", ICML 2018), on ``sklearn.datasets.load_digits`` (1,797 8x8 images, shipped inside
scikit-learn: nothing is downloaded). Recipe, seeded:

1. The images (64 pixels, scaled to [0, 1]) are split by image into train / val / test
   (60/20/20 by default, drawn from ``image_seed``): a bag only ever holds images of its own
   split, so no test image was seen in training.
2. A bag holds n images, n uniform in [min_tokens, max_tokens]. It is positive (label 1) with
   probability 1/2; a positive bag holds k images of the key digit (a '9'), its signal, with
   log2(k / n) uniform in [log2(1 / n), 0] (SNR k/n from 1/64 to 1 for n <= 64); the other
   images of a bag are drawn from the other nine digits. Images are drawn with replacement.
3. Two targets on the same bags: the bag label (``labels``, classification) and, for the
   positive bags, the centroid of their '9' images (``targets`` [S+, 64], regression: the
   paper's signal loss on real vectors).

:func:`generate` returns both data sets (arrays in the ``models.data`` format, flat ragged
form, with ``signal_mask`` and ``split``); :func:`write` writes them as two ``.npz`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.data.files import ragged, write_dataset
from models.data.sets import SPLIT_NAMES

KEY_DIGIT = 9
CLASSES = ("no 9", "has a 9")


@dataclass(frozen=True)
class BagsSpec:
    """Attributes:
    bags: bags per split (train, val, test).
    min_tokens, max_tokens: the range of n, images per bag.
    image_fractions: the share of the images in train, val and test.
    seed: draws the bags; image_seed: draws the image split.
    """

    bags: tuple[int, int, int] = (4000, 1000, 2000)
    min_tokens: int = 8
    max_tokens: int = 64
    image_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    image_seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError("need 1 <= min_tokens <= max_tokens")
        if min(self.bags) < 1 or abs(sum(self.image_fractions) - 1.0) > 1e-9:
            raise ValueError("need bags >= 1 per split and image fractions summing to 1")


def load_images() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """scikit-learn's digits: images (1797, 64) in [0, 1] and their digits (1797,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def image_split(digits: NDArray[np.int64], spec: BagsSpec) -> NDArray[np.int64]:
    """(I,) split of every image (0 train, 1 val, 2 test), stratified by digit."""
    rng = np.random.default_rng(spec.image_seed)
    split = np.zeros(len(digits), dtype=np.int64)
    for digit in range(10):
        images = rng.permutation(np.flatnonzero(digits == digit))
        cut = np.cumsum(np.round(np.asarray(spec.image_fractions[:2]) * len(images))).astype(int)
        split[images[cut[0] : cut[1]]] = 1
        split[images[cut[1] :]] = 2
    return split


def _bags(
    rng: np.random.Generator,
    count: int,
    keys: NDArray[np.int64],
    others: NDArray[np.int64],
    spec: BagsSpec,
) -> tuple[list[NDArray[np.int64]], NDArray[np.int64], list[NDArray[np.bool_]]]:
    """``count`` bags as image indices, their labels and their signal masks."""
    n = rng.integers(spec.min_tokens, spec.max_tokens + 1, size=count)
    label = (rng.random(count) < 0.5).astype(np.int64)
    snr = 2.0 ** rng.uniform(-np.log2(n), 0.0)
    k = np.where(label == 1, np.clip(np.rint(snr * n), 1, n), 0).astype(np.int64)
    images, signal = [], []
    for size, key_count in zip(n, k, strict=True):
        chosen = np.concatenate(
            [rng.choice(keys, size=key_count), rng.choice(others, size=size - key_count)]
        )
        order = rng.permutation(size)  # the '9's at random positions
        images.append(chosen[order])
        signal.append((np.arange(size) < key_count)[order])
    return images, label, signal


def generate(spec: BagsSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bag-label data set and the '9'-centroid data set, as ``write_dataset`` arrays."""
    pixels, digits = load_images()
    where = image_split(digits, spec)
    rng = np.random.default_rng(spec.seed)
    images, labels, signals, splits = [], [], [], []
    for value, _name in enumerate(SPLIT_NAMES):
        in_split = where == value
        keys = np.flatnonzero(in_split & (digits == KEY_DIGIT))
        others = np.flatnonzero(in_split & (digits != KEY_DIGIT))
        bag_images, bag_labels, bag_signal = _bags(rng, spec.bags[value], keys, others, spec)
        images += bag_images
        signals += bag_signal
        labels.append(bag_labels)
        splits.append(np.full(len(bag_labels), value, dtype=np.int64))
    label, split = np.concatenate(labels), np.concatenate(splits)
    tokens, offsets = ragged([pixels[i] for i in images])
    signal = np.concatenate(signals)
    bags = {
        "tokens": tokens,
        "offsets": offsets,
        "labels": label,
        "classes": np.array(CLASSES),
        "signal_mask": signal,
        "split": split,
    }
    positive = np.flatnonzero(label == 1)
    centroid_sets = [pixels[images[i]][signals[i]].mean(axis=0) for i in positive]
    pos_tokens, pos_offsets = ragged([pixels[images[i]] for i in positive])
    centroid = {
        "tokens": pos_tokens,
        "offsets": pos_offsets,
        "targets": np.stack(centroid_sets).astype(np.float32),
        "signal_mask": np.concatenate([signals[i] for i in positive]),
        "split": split[positive],
    }
    return bags, centroid


def write(spec: BagsSpec, folder: Path) -> tuple[Path, Path]:
    """Write ``bags.npz`` (classification) and ``centroid.npz`` (regression) into ``folder``."""
    bags, centroid = generate(spec)
    return (
        write_dataset(folder / "bags.npz", **bags),
        write_dataset(folder / "centroid.npz", **centroid),
    )
