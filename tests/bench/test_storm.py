"""bench.storm's summary: medians per server, head's ratios to app, shares of the calm server."""

from __future__ import annotations

from bench.storm import summary


def run(mode: str, accepted: float, polite: float, loop_ms: float) -> dict[str, object]:
    return {
        "mode": mode,
        "accepted_per_s": accepted,
        "refused_per_s": 100.0,
        "loop_cpu_ms_per_request": loop_ms,
        "polite_accepted_per_s": polite,
        "polite_p50_ms": None,  # no polite request served
    }


def test_summary_takes_medians_and_compares_the_servers() -> None:
    runs = [
        run("head", 30, 10, 0.2),
        run("head", 40, 10, 0.3),
        run("head", 90, 10, 0.25),
        run("app", 20, 5, 0.4),
        run("app", 30, 5, 0.5),
        run("calm", 100, 100, 1.0),
    ]
    result = summary(runs)
    assert result["median"]["head"]["accepted_per_s"] == 40
    assert "polite_p50_ms" not in result["median"]["head"]  # no value in any round
    ratios = result["head_over_app"]
    assert ratios["accepted_per_s"] == 1.6 and ratios["loop_cpu_ms_per_request"] == 0.56
    assert ratios["head_served_over_calm"] == 0.25 and ratios["app_served_over_calm"] == 0.15
