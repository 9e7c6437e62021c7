"""The kNN-Centroid generator against the recipe and the paper's reference numbers."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.knn_centroid import generate
from models.metrics import trivial_baselines

# Test MSE of the two trivial predictors, from the paper's public plotting script.
REFERENCE = {  # k: (predict mean of all 128, predict x_0)
    1: (0.0934, 0.0583),
    2: (0.0711, 0.0443),
    4: (0.0554, 0.0397),
    8: (0.0426, 0.0413),
    16: (0.0309, 0.0478),
    32: (0.0195, 0.0596),
    64: (0.00845, 0.0797),
    128: (7.7e-6, 0.1263),
}


@pytest.mark.slow
@pytest.mark.parametrize("k", list(REFERENCE))
def test_trivial_predictors_reproduce_the_reference(k: int) -> None:
    data = generate(20_000, k, seed=123)
    got = trivial_baselines(data.x, data.y)
    ref_mean, ref_x0 = REFERENCE[k]
    assert got["predict_mean_of_all"] == pytest.approx(ref_mean, rel=0.03)
    assert got["predict_x0"] == pytest.approx(ref_x0, rel=0.03)


def test_shapes_dtypes_and_masks() -> None:
    data = generate(300, 5, seed=0, num_vectors=20, dim=16)
    assert data.x.shape == (300, 20, 16) and data.x.dtype == np.float32
    assert data.y.shape == (300, 16) and data.y.dtype == np.float32
    assert data.signal_mask.shape == (300, 20) and data.signal_mask.dtype == bool
    assert (data.signal_mask.sum(1) == 5).all()
    assert not data.signal_mask[:, 0].any()


def test_signal_is_the_k_nearest_neighbours_and_the_target_their_mean() -> None:
    data = generate(50, 4, seed=1, num_vectors=30)
    for x, y, mask in zip(data.x, data.y, data.signal_mask, strict=True):
        dist = np.linalg.norm(x[1:].astype(np.float64) - x[0], axis=1)
        nearest = set((np.argsort(dist)[:4] + 1).tolist())
        assert set(np.flatnonzero(mask).tolist()) == nearest
        # Every noise token is at least as far from x_0 as every signal token.
        assert dist[mask[1:]].max() <= dist[~mask[1:]].min()
        np.testing.assert_allclose(y, x[mask].mean(0), rtol=1e-5, atol=1e-6)


def test_k_equal_to_n_means_all_others() -> None:
    data = generate(10, 16, seed=2, num_vectors=16)
    assert data.signal_mask[:, 1:].all() and not data.signal_mask[:, 0].any()
    np.testing.assert_allclose(data.y, data.x[:, 1:].mean(1), rtol=1e-5, atol=1e-6)


def test_feature_families_and_scale() -> None:
    """Columns are divided by sqrt(d) = 4: the widest family (exponential, scale <= 2, shift <= 3)
    keeps every value within a few units, and per-sample features differ in location."""
    data = generate(2000, 8, seed=3)
    assert np.abs(data.x).max() < 10.0
    per_sample_means = data.x.mean(axis=1)  # (S, D)
    assert per_sample_means.std(axis=0).min() > 0.2  # locations vary across samples


def test_seeded_and_chunk_independent() -> None:
    a = generate(5000, 8, seed=9)  # spans two generation chunks
    b = generate(5000, 8, seed=9)
    c = generate(5000, 8, seed=10)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.signal_mask, b.signal_mask)
    assert not np.array_equal(a.x, c.x)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0, "k": 1}, "num_samples"),
        ({"num_samples": 1, "k": 0}, "k must be"),
        ({"num_samples": 1, "k": 129}, "k must be"),
        ({"num_samples": 1, "k": 1, "dim": 19}, "dim must be"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(seed=0, **kwargs)
