"""Which folders are versions: ASCII digits only, collisions named, the rest ignored with why."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrepo.layout import parse_version, scan_versions

ARABIC_ONE = "\u0661"  # str.isdigit() says yes, and int() reads it as 1


def make(root: Path, *folders: str) -> Path:
    for folder in folders:
        (root / folder).mkdir(parents=True)
        (root / folder / "manifest.json").write_text("{}")
    return root


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("1", 1),
        ("01", 1),
        ("12", 12),
        ("0", None),
        ("²", None),
        (ARABIC_ONE, None),
        ("1a", None),
        (" 1", None),
        ("-1", None),
        ("1" * 19, None),
    ],
)
def test_parse_version(name: str, version: int | None) -> None:
    assert parse_version(name) == version


def test_odd_folders_are_ignored_with_a_reason(tmp_path: Path) -> None:
    repo = make(tmp_path, "m/1", "m/²", "m/" + ARABIC_ONE, "m/old", "m/0", "n/3")
    scan = scan_versions(repo)
    assert [(v.name, v.version) for v in scan.versions] == [("m", 1), ("n", 3)]
    assert sorted(p.name for p, _ in scan.ignored) == sorted(["²", ARABIC_ONE, "old", "0"])
    assert all("ASCII digits" in why for _, why in scan.ignored)
    assert not scan.problems


def test_two_folders_for_one_version_are_an_error_naming_both(tmp_path: Path) -> None:
    repo = make(tmp_path, "m/1", "m/01", "m/2")
    scan = scan_versions(repo)
    assert [v.version for v in scan.versions] == [2]
    (problem,) = scan.problems
    assert (problem.name, problem.version) == ("m", 1)
    assert "'01'" in problem.message and "'1'" in problem.message


def test_only_named_models(tmp_path: Path) -> None:
    repo = make(tmp_path, "a/1", "b/1")
    assert [v.name for v in scan_versions(repo, ["b"]).versions] == ["b"]
