"""Prometheus configuration and alert rules, checked by promtool (Debian's prometheus package)."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy import tools

PROMETHEUS = tools.DEPLOY / "prometheus"
ALERTS = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.executable("promtool"), *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_config() -> None:
    """The compose deployment's config, with its rule files."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in result.stdout


def test_rule_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases: dict[str, list[Any]] = {rule["alert"]: [] for rule in RULES}
    unit_tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    assert unit_tests["rule_files"] == ["alerts.yml"]
    for test in unit_tests["tests"]:
        for case in test["alert_rule_test"]:
            cases[case["alertname"]].append(case["exp_alerts"])
    for name, expected in cases.items():
        assert any(expected), f"{name} is never tested firing"
        assert any(e == [] for e in expected), f"{name} is never tested not firing"


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alerts_say_what_and_how_bad(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("AdaPool")
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert "for" in rule
