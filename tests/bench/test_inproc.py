"""``python -m bench.inproc``: the app driven in process, with the real models and batcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import inproc


@pytest.mark.parametrize("accept", ["application/json", "application/x-npz"])
def test_counts_every_request_and_its_cpu(capsys: pytest.CaptureFixture[str], accept: str) -> None:
    argv = ["--requests", "40", "--concurrency", "8", "--items", "2", "--warmup", "2"]
    assert inproc.main([*argv, "--accept", accept]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert result["requests"] == 40 and result["failed"] == 0 and result["accept"] == accept
    assert result["items_per_second"] == pytest.approx(2 * result["requests_per_second"])
    assert result["cpu_ms_per_request"] > 0
    assert len(result["gc_collections"]) == 3 and result["gc_max_pause_ms"] <= result["gc_ms"]


def test_profile_names_the_pool_handler(capsys: pytest.CaptureFixture[str]) -> None:
    assert inproc.main(["--requests", "20", "--warmup", "1", "--profile", "200"]) == 0
    assert "service/api/pool.py" in capsys.readouterr().out


def test_a_refused_request_stops_it() -> None:
    with pytest.raises(RuntimeError, match="warm-up request answered 422"):
        inproc.main(["--requests", "5", "--tokens", "0"])


def test_baseline_runs_both_checkouts_in_their_own_processes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = Path(inproc.__file__).resolve().parents[1]
    argv = ["--requests", "20", "--warmup", "1", "--baseline", str(root), "--rounds", "2"]
    assert inproc.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baseline"] == result["current"] == str(root / "service")
    rps = result["requests_per_second"]
    assert len(rps["baseline_rounds"]) == len(rps["current_rounds"]) == 2
    assert rps["ratio"] == pytest.approx(rps["current"] / rps["baseline"])
    assert result["failed"] == 0


def test_argv_without() -> None:
    argv = ["--baseline", "/x", "--items", "8", "--rounds=2", "--profile", "5"]
    assert inproc.argv_without(argv, "--baseline", "--rounds", "--profile") == ["--items", "8"]
