"""Broken manifests and odd version folders on the real server: it starts, each broken version
is not ready with a reason naming the file and the field, the others serve, and no request
gets a 500."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import process
from tests.reliability.common import REPOSITORY, assert_error, sample, scrape, serves

pytestmark = pytest.mark.slow
D = 16
ARABIC_ONE = "\u0661"  # str.isdigit() accepts it and int() reads it as 1


def copy_version(source: str, repo: Path, name: str, folder: str = "1") -> Path:
    target = repo / name / folder
    shutil.copytree(REPOSITORY / source / "1", target)
    return target


def edit(version: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = version / "manifest.json"
    data = json.loads(manifest.read_text())
    change(data)
    manifest.write_text(json.dumps(data))


def test_broken_manifests_and_odd_folders(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy_version("knn-avg", repo, "knn-avg")
    broken: dict[str, str] = {}

    def break_model(name: str, source: str, change: Callable[[dict[str, Any]], None], why: str):
        edit(copy_version(source, repo, name), change)
        broken[name] = why

    break_model("no-pooling", "knn-max", lambda m: m.pop("pooling"), "field 'pooling': is missing")
    break_model(
        "list-metrics", "knn-max", lambda m: m.update(metrics=[1, 2]), "field 'metrics': must be"
    )
    break_model(
        "bad-sha",
        "knn-max",
        lambda m: m["sha256"].update({"model.onnx": "abc"}),
        "field 'sha256.model.onnx': must be 64 hex digits",
    )
    break_model(
        "no-indices",
        "knn-adapool-mean",
        lambda m: m["pooling"].update(query="indices", query_indices=[]),
        "field 'pooling.query_indices': must not be empty",
    )
    # Odd folders: only ASCII digits name versions; a folder that would silently replace
    # version 1 is ignored (its manifest is broken, so a mix-up would show).
    copy_version("knn-avg", repo, "odd-folders")
    for odd in ("²", ARABIC_ONE, "latest"):
        edit(copy_version("knn-avg", repo, "odd-folders", odd), lambda m: m.pop("pooling"))
    # Two folders for one version: an error naming both.
    copy_version("knn-avg", repo, "collide")
    copy_version("knn-avg", repo, "collide", "01")
    broken["collide"] = "version folders '01' and '1' of model 'collide' both name version 1"

    flags = ["--default-model", "knn-avg"]
    with process.running_server(repo, flags, wait_for="/health/live") as (url, server):
        ready = httpx.get(f"{url}/health/ready")
        listing = httpx.get(f"{url}/models")
        described = {name: httpx.get(f"{url}/models/{name}") for name in broken}
        refused = {
            name: httpx.post(f"{url}/models/{name}/pool", json={"embeddings": [[[0.5] * D]]})
            for name in broken
        }
        odd = httpx.get(f"{url}/models/odd-folders").json()["versions"]
        serves(url, "knn-avg")
        body = {"embeddings": [[[0.5] * D] * 3]}
        odd_answer = httpx.post(f"{url}/models/odd-folders/pool", json=body)
        metrics = scrape(url)
    log = server.stdout.read().decode() if server.stdout else ""

    assert ready.status_code == 503
    problems = ready.json()["problems"]
    print(f"\nbroken manifests and folders: readiness 503, problems {problems}")
    assert len(problems) == len(broken)
    assert listing.status_code == 200
    listed = {m["name"]: m["latest"] for m in listing.json()["models"]}
    for name, why in broken.items():
        (problem,) = [p for p in problems if p.startswith(f"{name}/1: ")]
        assert why in problem, problem
        if name != "collide":
            assert f"{name}/1/manifest.json" in problem  # the file, then the field
        assert listed[name]["ready"] is False and why in listed[name]["error"]
        assert described[name].status_code == 200
        assert_error(refused[name], 503, "not_ready")
        assert sample(metrics, "adapool_model_ready", model=name, version="1") == 0
    assert [v["version"] for v in odd] == [1] and odd[0]["ready"] is True
    assert odd_answer.status_code == 200
    assert listed["knn-avg"]["ready"] is True
    assert log.count("odd-folders") >= 3 and "not a version folder" in log
    codes = [dict(labels)["status"] for name, labels in metrics if name == "adapool_requests_total"]
    assert codes and not any(code.startswith("5") and code != "503" for code in codes)
