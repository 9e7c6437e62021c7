"""The Signature task's generator: masks, targets, the signature, and the SNR spread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data import signature
from models.metrics import SNR_BANDS
from models.signature_study import band_of, choose_rule, load_study, requirements

DATA = signature.generate(4000, seed=3)


def test_shapes_masks_and_padding() -> None:
    x, y, signal, mask = DATA.x, DATA.y, DATA.signal_mask, DATA.attention_mask
    assert mask is not None
    assert x.shape == (4000, 128, 16) and y.shape == (4000, 16) and x.dtype == np.float32
    n = mask.sum(axis=1)
    assert n.min() >= 32 and n.max() <= 128 and n.min() < 40 and n.max() > 120
    assert np.array_equal(mask, np.arange(128)[None, :] < n[:, None])  # real tokens first
    assert not x[~mask].any()  # padding is zeros
    assert not (signal & ~mask).any() and (signal.sum(axis=1) >= 1).all()


def test_target_is_the_signal_centroid() -> None:
    m = DATA.signal_mask[..., None]
    expected = (DATA.x * m).sum(axis=1) / m.sum(axis=1)
    np.testing.assert_allclose(DATA.y, expected, rtol=1e-5, atol=1e-6)


def test_signal_tokens_carry_the_signature_and_noise_does_not() -> None:
    pattern = signature.signature(4)
    assert pattern.tolist() == [1.0, -1.0, 1.0, -1.0]
    head = DATA.x[..., :4]
    on_signal = head[DATA.signal_mask]
    on_noise = head[DATA.attention_mask & ~DATA.signal_mask]
    np.testing.assert_allclose(on_signal.mean(axis=0), pattern, atol=0.02)
    assert on_signal.std(axis=0) == pytest.approx(np.full(4, 0.25), abs=0.02)
    np.testing.assert_allclose(on_noise.mean(axis=0), 0.0, atol=0.02)
    assert on_noise.std(axis=0) == pytest.approx(np.ones(4), abs=0.03)
    # the other features do not tell signal from noise
    rest = DATA.x[..., 4:]
    diff = rest[DATA.signal_mask].mean(axis=0) - rest[DATA.attention_mask & ~DATA.signal_mask].mean(
        0
    )
    assert np.abs(diff).max() < 0.05


def test_snr_spans_the_papers_range_in_every_band() -> None:
    snr = signature.snr(DATA)
    assert snr.min() == pytest.approx(1 / 128) and snr.max() == 1.0
    bands = band_of(DATA.signal_mask, DATA.attention_mask)
    counts = np.bincount(bands - SNR_BANDS[0], minlength=len(SNR_BANDS))
    assert (counts > 40).all(), counts  # every band from 1/128 to 1 is populated


def test_seeded() -> None:
    again = signature.generate(50, seed=3)
    np.testing.assert_array_equal(again.x, signature.generate(50, seed=3).x)
    assert not np.array_equal(again.x, signature.generate(50, seed=4).x)


def test_rule_choice_prefers_requirements_then_mean_f1() -> None:
    rows = []
    for band in SNR_BANDS:
        chance = min(0.9, 2 * 2.0**band / (1 + 2.0**band))
        rows.append({"rule": "uniform", "log2_snr": band, "f1": 0.99, "f1_chance": chance})
        rows.append({"rule": "tenth-max", "log2_snr": band, "f1": 0.9, "f1_chance": chance})
    rows = [r for r in rows if not (r["rule"] == "uniform" and r["log2_snr"] == 0)]
    rows.append({"rule": "uniform", "log2_snr": 0, "f1": 0.5, "f1_chance": 0.9})  # misses SNR 1
    for rule in ("half-uniform", "half-max", "quarter-max", "mass-90", "mass-95"):
        rows += [{"rule": rule, "log2_snr": b, "f1": 0.1, "f1_chance": 0.5} for b in SNR_BANDS]
    chosen, table = choose_rule(rows)
    assert chosen == "tenth-max" and table["tenth-max"]["met"] == 3 and table["uniform"]["met"] == 2
    assert requirements({b: 0.9 for b in SNR_BANDS}, {b: 0.4 for b in SNR_BANDS}) == {
        "F1 >= 0.8 at SNR 1/8-1/2": True,
        "F1 >= 2x chance at SNR 1/32-1/4": True,
        "F1 >= chance at SNR 1": True,
    }


@pytest.mark.parametrize("preset", sorted(Path("configs/signature").glob("*.toml")))
def test_committed_study_presets_load(preset: Path) -> None:
    study = load_study(preset)
    assert study.study.default_variant in study.variants
    assert {"avg", "max", "adapool-mean"} <= set(study.variants)


def test_the_tiny_study_trains_and_reports(tmp_path: Path) -> None:
    from models.signature_study import main

    code = main(
        [
            "--preset",
            "configs/signature/tiny.toml",
            "--runs",
            str(tmp_path / "runs"),
            "--results",
            str(tmp_path / "results"),
            "--workers",
            "1",
        ]
    )
    assert code == 0
    for name in ("bands.csv", "rules.csv", "summary.md", "signature.png", "meta.json"):
        assert (tmp_path / "results" / name).stat().st_size > 0
    text = (tmp_path / "results" / "summary.md").read_text()
    assert "| adapool-mean |" in text and "Chosen:" in text


def test_about_one_noise_token_in_a_hundred_looks_like_signal() -> None:
    """The docstring's and README's claim: about 1% of noise tokens fall as close to the pattern
    as 99% of signal tokens (the Bayes floor of the signal-set F1 at low SNR)."""
    pattern = signature.signature(4)
    distance = ((DATA.x[..., :4] - pattern) ** 2).sum(axis=-1)
    radius = np.quantile(distance[DATA.signal_mask], 0.99)
    noise = DATA.attention_mask & ~DATA.signal_mask
    rate = (distance[noise] < radius).mean()
    assert 0.005 < rate < 0.02, rate
