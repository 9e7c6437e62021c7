"""Signal-set rules: which of an item's tokens its pooling weights call signal.

A rule is data (:class:`SignalRule`, recorded in each model's manifest) with one NumPy
implementation, :meth:`SignalRule.select`, that training metrics and the service both apply, so
the figures a manifest states and the sets the service returns come from the same code.

Kinds:
- ``share_of_max``: head-mean weight >= ``value`` x the item's largest weight (the project's rule
  is ``share_of_max`` 0.25: chosen by measurement in ``python -m models.signature_study``);
- ``uniform_share``: head-mean weight > ``value`` / n, n the item's real tokens;
- ``mass``: the fewest largest weights that hold ``value`` of the item's weight;
- ``largest_gap``: sort the item's weights; the tokens above the largest ratio between two
  consecutive ones, when that ratio is at least ``value`` (> 1), else every real token (chosen
  by ``digits-bags-adapool`` on its validation split: a sharp pool puts uneven weights on its
  signal tokens, which a share of the largest weight splits, while the drop to the noise stays).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

RuleKind = Literal["share_of_max", "uniform_share", "mass", "largest_gap"]
KINDS: tuple[str, ...] = get_args(RuleKind)


class RuleError(ValueError):
    """A rule that does not exist or whose value is out of range."""


@dataclass(frozen=True)
class SignalRule:
    kind: RuleKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RuleError(f"unknown signal rule kind {self.kind!r}; kinds: {', '.join(KINDS)}")
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise RuleError(f"signal rule value must be a number, got {self.value!r}")
        if self.kind == "largest_gap":
            if not self.value > 1:
                raise RuleError(f"largest_gap needs a value > 1, got {self.value}")
            return
        low_open = self.kind != "uniform_share"  # 0 < value <= 1, or value > 0 for uniform_share
        if not (self.value > 0 and (self.value <= 1 or not low_open)):
            bounds = "(0, 1]" if low_open else "> 0"
            raise RuleError(f"{self.kind} needs a value in {bounds}, got {self.value}")

    @property
    def definition(self) -> str:
        """The rule in words, as the README, /info and every answer state it."""
        if self.kind == "share_of_max":
            return f"head-mean weight >= max weight {_times(self.value)}"
        if self.kind == "uniform_share":
            return f"head-mean weight > {_times(self.value, 'n_real')}"
        if self.kind == "largest_gap":
            return (
                "head-mean weights above the largest drop between consecutive sorted weights, "
                f"if it is at least {self.value:g}x (else all tokens)"
            )
        return f"the fewest largest head-mean weights holding {self.value * 100:g}% of the weight"

    def select(self, weights: NDArray[np.floating], mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """The estimated signal set.

        Args:
            weights: (B, N) head-mean pooling weights (any value on padding).
            mask: (B, N) bool, True on real tokens; every row has at least one.

        Returns:
            (B, N) bool, True on the real tokens the rule calls signal.
        """
        w = np.asarray(weights, dtype=np.float64)
        mask = np.asarray(mask, dtype=bool)
        if self.kind == "share_of_max":
            top = np.where(mask, w, -np.inf).max(axis=1, keepdims=True)
            chosen: NDArray[np.bool_] = (w >= self.value * top) & mask
            return chosen
        if self.kind == "uniform_share":
            n_real = mask.sum(axis=1, keepdims=True)
            chosen = (w > self.value / n_real) & mask
            return chosen
        if self.kind == "largest_gap":
            return _largest_gap(w, mask, self.value)
        order = np.argsort(np.where(mask, -w, np.inf), axis=1, kind="stable")
        ranked = np.take_along_axis(np.where(mask, w, 0.0), order, axis=1)
        before = np.cumsum(ranked, axis=1) - ranked  # the mass of the tokens ahead of each
        keep_ranked = before < self.value * ranked.sum(axis=1, keepdims=True)
        keep = np.zeros_like(mask)
        np.put_along_axis(keep, order, keep_ranked, axis=1)
        chosen = keep & mask
        return chosen

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "definition": self.definition}

    @classmethod
    def from_dict(cls, data: Any) -> SignalRule:
        """From a manifest's ``signal_rule`` object (``definition`` is derived, not read)."""
        if not isinstance(data, dict):
            raise RuleError(f"must be an object with kind and value, got {type(data).__name__}")
        if "kind" not in data or "value" not in data:
            raise RuleError("needs 'kind' and 'value'")
        return cls(data["kind"], data["value"])

    @classmethod
    def from_definition(cls, text: str) -> SignalRule:
        """A rule from its words (format-1 manifests stored only those)."""
        for rule in NAMED.values():
            if rule.definition == text:
                return rule
        raise RuleError(f"unknown signal rule {text!r}")


def _largest_gap(
    w: NDArray[np.float64], mask: NDArray[np.bool_], ratio: float
) -> NDArray[np.bool_]:
    """The tokens above the largest drop in log weight between consecutive sorted weights, when
    that drop is at least log(ratio); every real token otherwise (near-uniform weights)."""
    log_w = np.log(np.maximum(w, np.finfo(np.float64).tiny))
    # Padding sorts last and repeats the row's smallest real weight: it adds no drop.
    floor = np.where(mask, log_w, np.inf).min(axis=1, keepdims=True)
    log_w = np.where(mask, log_w, floor)
    if log_w.shape[1] < 2:
        return mask.copy()
    order = np.argsort(-log_w, axis=1, kind="stable")
    ranked = np.take_along_axis(log_w, order, axis=1)
    drops = ranked[:, :-1] - ranked[:, 1:]  # (B, N - 1), >= 0
    keep_n = np.where(drops.max(axis=1) >= np.log(ratio), drops.argmax(axis=1) + 1, mask.sum(1))
    keep = np.zeros_like(mask)
    np.put_along_axis(keep, order, np.arange(mask.shape[1])[None, :] < keep_n[:, None], axis=1)
    chosen: NDArray[np.bool_] = keep & mask
    return chosen


def _times(value: float, of: str = "") -> str:
    """``value`` in words: 0.25 -> '/ 4'; with ``of`` n: 1 -> '1/n', 0.5 -> '1/(2 n)'."""
    inverse = 1 / value
    if not of:
        return f"/ {inverse:g}" if inverse.is_integer() else f"x {value:g}"
    if value == 1:
        return f"1/{of}"
    return f"1/({inverse:g} {of})" if inverse.is_integer() else f"{value:g}/{of}"


# The candidates that the Signature study scores, by the names its tables use.
NAMED: dict[str, SignalRule] = {
    "uniform": SignalRule("uniform_share", 1.0),
    "half-uniform": SignalRule("uniform_share", 0.5),
    "half-max": SignalRule("share_of_max", 0.5),
    "quarter-max": SignalRule("share_of_max", 0.25),
    "tenth-max": SignalRule("share_of_max", 0.1),
    "mass-90": SignalRule("mass", 0.9),
    "mass-95": SignalRule("mass", 0.95),
}
DEFAULT_RULE_NAME = "quarter-max"
DEFAULT_RULE = NAMED[DEFAULT_RULE_NAME]  # for models trained without signal masks
