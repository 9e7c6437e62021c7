"""Digits bags: the generator's recipe (splits by image, the '9's, the SNR, the centroid) and the
study's machinery on a seconds-long preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.data import read_dataset
from models.data.digits_bags import KEY_DIGIT, BagsSpec, generate, image_split, load_images
from models.digits_study import expand, load_preset, main

ROOT = Path(__file__).parents[2]
SPEC = BagsSpec(bags=(300, 100, 200), min_tokens=8, max_tokens=64, seed=3, image_seed=5)


@pytest.fixture(scope="module")
def bags() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return generate(SPEC)


def image_of(tokens: np.ndarray) -> np.ndarray:
    """Each token's image index (the digits holds a few duplicate images: the first wins)."""
    pixels, _ = load_images()
    lookup = {row.tobytes(): i for i, row in reversed(list(enumerate(pixels)))}
    return np.array([lookup[row.tobytes()] for row in tokens])


def test_bags_hold_only_images_of_their_split_and_the_signal_is_the_nines(
    bags: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
) -> None:
    data, _ = bags
    _, digits = load_images()
    images = image_of(data["tokens"])
    split_of_image = image_split(digits, SPEC)
    set_of_token = np.repeat(np.arange(len(data["labels"])), np.diff(data["offsets"]))
    np.testing.assert_array_equal(split_of_image[images], data["split"][set_of_token])
    np.testing.assert_array_equal(data["signal_mask"], digits[images] == KEY_DIGIT)
    k = np.bincount(set_of_token, weights=data["signal_mask"]).astype(int)
    n = np.diff(data["offsets"])
    np.testing.assert_array_equal(data["labels"], (k > 0).astype(int))
    assert n.min() >= 8 and n.max() <= 64 and np.bincount(data["split"]).tolist() == [300, 100, 200]
    snr = k[k > 0] / n[k > 0]
    assert snr.min() < 1 / 16 and snr.max() == 1.0  # the whole range, 1/64 .. 1
    assert 0.4 < data["labels"].mean() < 0.6


def test_the_image_split_is_60_20_20_by_image_and_seeded() -> None:
    _, digits = load_images()
    split = image_split(digits, SPEC)
    shares = np.bincount(split) / len(split)
    np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.01)
    for digit in range(10):  # stratified: every digit in every split
        assert set(split[digits == digit]) == {0, 1, 2}
    other = image_split(digits, BagsSpec(image_seed=6))
    assert (other != split).any()


def test_the_centroid_target_is_the_mean_of_the_nines(
    bags: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
) -> None:
    data, centroid = bags
    assert len(centroid["targets"]) == int(data["labels"].sum())
    first = slice(centroid["offsets"][0], centroid["offsets"][1])
    nines = centroid["tokens"][first][centroid["signal_mask"][first]]
    np.testing.assert_allclose(centroid["targets"][0], nines.mean(axis=0), rtol=1e-6)
    again, _ = generate(SPEC)
    np.testing.assert_array_equal(again["tokens"], data["tokens"])  # seeded


def test_the_cpu_preset_expands_as_documented() -> None:
    preset = load_preset(ROOT / "configs" / "digits" / "cpu.toml")
    runs = expand(preset, Path("runs/digits-cpu"))
    names = {r.method for r in runs}
    assert "bags/cls/0" not in names and "bags/adapool-faithful/0" not in names
    assert {"bags/cls/1", "bags/adapool-faithful/2", "few-bags/avg/0"} <= names
    assert {r.seed for r in runs} == {0, 1, 2}
    config = next(r.config for r in runs if r.method == "bags/adapool-faithful/1" and r.seed == 2)
    assert config.data.seed == config.train.seed == 2 and config.model.depth == 1
    assert config.data.path == "runs/digits-cpu/data/standard-seed2/bags.npz"


@pytest.mark.slow
def test_the_tiny_study_trains_and_reports(tmp_path: Path) -> None:
    runs, results = tmp_path / "runs", tmp_path / "results"
    preset = str(ROOT / "configs" / "digits" / "tiny.toml")
    assert main(["--preset", preset, "--runs", str(runs), "--results", str(results)]) == 0
    summary = (results / "summary.md").read_text()
    assert "## Targets: `adapool-faithful d1`" in summary
    assert "| adapool-faithful d1 |" in summary and "| avg d0 |" in summary
    assert "## Signal loss: the centroid of the '9's" in summary
    assert "[1/16, 1/4)" in summary  # bags of 4-16 images never reach SNR < 1/16
    meta = json.loads((results / "meta.json").read_text())
    assert meta["runs"] == 5 + 3 + 2  # bags: 2 x 2 + faithful d1; few: 3 at depth 1; centroid: 2
    assert (results / "digits_bags.png").stat().st_size > 10_000
    sets = read_dataset(runs / "data" / "standard-seed0" / "bags.npz")
    assert len(sets) == 200 and sets.classes == ("no 9", "has a 9")
    # Rerunning trains nothing: every run is done.
    assert main(["--preset", preset, "--runs", str(runs), "--results", str(results)]) == 0
