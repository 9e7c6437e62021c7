"""The PromQL of the alert rules and the Grafana dashboard, and the metrics it names."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.deploy import tools

DASHBOARD = tools.DEPLOY / "grafana" / "dashboards" / "adapool.json"
ALERTS = tools.DEPLOY / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\badapool_[a-z0-9_]+\b")
# metric{label="..", label=~".."}: the labels a selector names.
SELECTOR = re.compile(r"\b(adapool_[a-z0-9_]+)\s*\{([^}]*)\}")
LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# What Grafana substitutes before a query reaches Prometheus, for running it outside Grafana.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$instance": ".*"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_targets() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel."""
    return [
        (panel["title"], target)
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def every_expression() -> dict[str, str]:
    """Where each expression comes from -> the expression."""
    out = {f"alert {r['alert']}": r["expr"] for r in alert_rules()}
    for title, target in dashboard_targets():
        out[f"panel {title!r} {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        out[f"variable {variable['name']}"] = variable["query"]["query"]
    return out
