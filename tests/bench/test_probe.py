"""bench.probe: the rule the server replaced, the summary of choices, and one real probe."""

from __future__ import annotations

from pathlib import Path

from bench.probe import envelope_rule, gain, probe_model, summary
from tests.service.server import REPOSITORY

STEADY = [(8, 1000.0), (16, 980.0), (64, 900.0)]


def test_the_envelope_rule_takes_each_sizes_fastest_run() -> None:
    assert envelope_rule([STEADY, STEADY]) == 16
    # one lucky run of 8 decides the envelope (the server's rule takes the medians: 16)
    assert envelope_rule([STEADY, [(8, 1200.0), (16, 980.0), (64, 900.0)], STEADY]) == 8
    assert envelope_rule([STEADY, [(8, 1000.0), (16, 980.0), (64, 990.0)]]) is None


def test_gain_is_the_median_rounds_rise_over_the_largest_batch() -> None:
    rounds = [
        STEADY,
        [(8, 1200.0), (16, 980.0), (64, 900.0)],
        [(8, 900.0), (16, 900.0), (64, 900.0)],
    ]
    assert gain(rounds) == 1000 / 900  # rounds: 1.11, 1.33, 1.0


def test_summary_counts_choices_per_rule() -> None:
    flat = [(8, 1000.0), (16, 1000.0), (64, 1000.0)]
    lucky = [(8, 1200.0), (16, 980.0), (64, 900.0)]
    probes = [[STEADY] * 3, [STEADY] * 3, [flat] * 3, [STEADY, lucky, STEADY]]
    result = summary(probes)
    assert result["decide"] == {"choices": {"16": 3, "caps": 1}, "modal_share": 0.75}
    assert result["envelope"]["choices"] == {"16": 2, "caps": 1, "8": 1}
    assert result["envelope"]["modal_share"] == 0.5
    # median per probe of (best smaller batch / largest): steady 1000/900, flat 1.0
    assert result["gain_over_largest"] == [1.0, 1000 / 900]


def test_a_real_probe_of_a_committed_model() -> None:
    """The server's own probe on a real ONNX Runtime session: every round times every size."""
    probes = probe_model(Path(REPOSITORY), "knn-avg", 1)
    (rounds,) = probes
    assert len(rounds) >= 3
    assert all([b for b, _ in r] == [1, 2, 4, 8, 16, 32, 64] for r in rounds)
    assert all(ips > 0 for r in rounds for _, ips in r)
