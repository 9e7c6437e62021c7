"""The signal-set rules: one implementation, used by training metrics and the service."""

from __future__ import annotations

import numpy as np
import pytest

from modelrepo import NAMED, RuleError, SignalRule

W = np.array([[0.5, 0.2, 0.13, 0.1, 0.07, 0.0], [0.25, 0.25, 0.25, 0.25, 0.0, 0.0]])
MASK = np.array([[True] * 5 + [False], [True] * 4 + [False] * 2])


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (SignalRule("share_of_max", 0.25), [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]),
        (SignalRule("share_of_max", 0.5), [[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]),
        (SignalRule("uniform_share", 1.0), [[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
        (SignalRule("uniform_share", 0.5), [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]),
        (SignalRule("mass", 0.8), [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]),
        (SignalRule("mass", 0.45), [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]]),
        # the largest drop, 2.5x, follows the first token; uniform weights have none: all tokens
        (SignalRule("largest_gap", 2.0), [[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]),
        (SignalRule("largest_gap", 3.0), [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]),
    ],
)
def test_select(rule: SignalRule, expected: list[list[int]]) -> None:
    assert rule.select(W, MASK).astype(int).tolist() == expected


def test_padding_is_never_signal_whatever_it_holds() -> None:
    w = W.copy()
    w[~MASK] = 9.0
    for rule in [*NAMED.values(), SignalRule("largest_gap", 1.5)]:
        assert not rule.select(w, MASK)[~MASK].any()


@pytest.mark.parametrize(
    ("name", "definition"),
    [
        ("uniform", "head-mean weight > 1/n_real"),
        ("half-uniform", "head-mean weight > 1/(2 n_real)"),
        ("quarter-max", "head-mean weight >= max weight / 4"),
        ("mass-90", "the fewest largest head-mean weights holding 90% of the weight"),
    ],
)
def test_definitions(name: str, definition: str) -> None:
    assert NAMED[name].definition == definition
    assert SignalRule.from_definition(definition) == NAMED[name]


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("share_of_max", 0.0),
        ("share_of_max", 1.5),
        ("mass", -0.1),
        ("uniform_share", 0),
        ("magic", 0.5),
        ("mass", True),
        ("mass", "0.5"),
        ("largest_gap", 1.0),
    ],
)
def test_bad_rules_are_refused(kind: str, value: object) -> None:
    with pytest.raises(RuleError):
        SignalRule(kind, value)  # type: ignore[arg-type]
