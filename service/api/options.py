"""The /pool request options: query parameters, or the same keys in a JSON body (typed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from service.errors import invalid

WeightsMode = Literal["none", "mean", "heads"]


@dataclass(frozen=True)
class Options:
    return_weights: WeightsMode = "mean"
    diagnostics: bool = True
    top_k: int = 5
    contributions: bool = False  # each token's signed share of each output (faithful models)


OPTIONS = ("return_weights", "diagnostics", "top_k", "contributions")


def parse_options(
    query: dict[str, str], body: dict[str, Any], max_top_k: int, default_top_k: int
) -> Options:
    """Options from the query string (text), overridden by the same keys in a JSON body (typed:
    ``"diagnostics": "false"`` in a body is refused, as ``?diagnostics=false`` is not)."""
    for where, given in (("query", query), ("body", body)):
        unknown = sorted(set(given) - set(OPTIONS))
        if unknown:
            raise invalid(where, f"unknown keys {unknown}; options are {list(OPTIONS)}")
    weights = body.get("return_weights", query.get("return_weights", "mean"))
    if weights not in ("none", "mean", "heads"):
        raise invalid("return_weights", f"must be none, mean or heads, got {weights!r}")
    diagnostics = _flag("diagnostics", query, body, True)
    contributions = _flag("contributions", query, body, False)
    if "top_k" in body:
        top_k = body["top_k"]
        if type(top_k) is not int:  # bool is an int subclass: true is not a number of tokens
            raise invalid("top_k", f"must be an integer, got {top_k!r}")
    else:
        text = query.get("top_k", str(default_top_k))
        try:
            top_k = int(text)
        except ValueError:
            raise invalid("top_k", f"must be an integer, got {text[:20]!r}") from None
    if not 0 <= top_k <= max_top_k:
        raise invalid("top_k", f"must be in [0, {max_top_k}], got {top_k}")
    return Options(weights, diagnostics, top_k, contributions)


def _flag(name: str, query: dict[str, str], body: dict[str, Any], default: bool) -> bool:
    """A true/false option: typed in a JSON body, text in the query string."""
    if name in body:
        value = body[name]
        if not isinstance(value, bool):
            raise invalid(name, f"must be true or false, got {value!r}")
        return value
    text = query.get(name, str(default).lower())
    if text.lower() not in ("true", "false"):
        raise invalid(name, f"must be true or false, got {text[:20]!r}")
    return text.lower() == "true"
