"""bench.ab's summary: each side's median round and the ratio of the medians."""

from __future__ import annotations

import pytest

from bench.ab import summary


def test_summary_takes_each_sides_median_round() -> None:
    rounds = {
        "before": [{"items_per_second": v} for v in (500.0, 580.0, 560.0)],
        "after": [{"items_per_second": v} for v in (610.0, 600.0, 900.0)],
    }
    result = summary(rounds)
    assert result["median_items_per_second"] == {"before": 560.0, "after": 610.0}
    assert result["after_over_before"] == pytest.approx(610 / 560)
