"""bench.gpu_all, the one-call GPU script, dry-run on the CPU end to end, and its deadlines."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from bench import gpu_all
from bench.gpu import DEFAULT_MODEL
from bench.gpu_stages import Context, sweep

ROOT = Path(__file__).parents[2]
TINY = ROOT / "configs" / "sweep" / "tiny.toml"
FILES_BACK = 8  # the device tool returns at most 8 files from $OUT


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], float]:
    base = tmp_path_factory.mktemp("gpu")
    out = base / "out"
    args = ["run", str(out), "--dry-run-cpu", "--budget", "30", "--work", str(base / "work")]
    started = time.monotonic()
    assert gpu_all.main([*args, "--prepared", str(base / "not-prepared")]) == 0
    seconds = time.monotonic() - started
    return out, json.loads((out / "gpu.json").read_text()), seconds


@pytest.mark.slow
def test_dry_run_writes_every_stage_within_the_device_limits(
    dry_run: tuple[Path, dict[str, Any], float],
) -> None:
    out, results, seconds = dry_run
    assert seconds < 45  # a 30 s budget, a sweep stopped at its deadline, a reserve
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= FILES_BACK and all(p.parent == out for p in files)
    assert {p.name for p in files} == {"gpu.json", "gpu.md", "sweep.md", "sweep.tar.gz"}
    assert all(p.stat().st_size < 16 * 2**20 for p in files)
    stages = results["stages"]
    assert list(stages) == [s.name for s in gpu_all.STAGES]
    for name, stage in stages.items():
        # every stage's code runs on the CPU here (the service's load only where hey is)
        assert stage["status"] == "ran", (name, stage.get("reason"), stage.get("traceback"))
        assert stage["seconds"] <= stage["share_seconds"] + 10, name  # + a server's start
    md = (out / "gpu.md").read_text()
    assert "not GPU figures" in results["dry_run_cpu"] and "not GPU figures" in md


@pytest.mark.slow
def test_dry_run_records_the_providers_really_in_use(
    dry_run: tuple[Path, dict[str, Any], float],
) -> None:
    _, results, _ = dry_run
    env = results["stages"]["environment"]["result"]
    sessions = env["sessions"]
    assert sessions["CPUExecutionProvider"]["in_use"] == ["CPUExecutionProvider"]
    for provider in ("TensorrtExecutionProvider", "CUDAExecutionProvider"):
        # this machine's onnxruntime is the CPU build: the reason names what it has instead
        assert "has no" in sessions[provider]["skipped"], sessions[provider]
    ort = results["stages"]["onnxruntime"]["result"]
    used = {p for variants in ort["providers"].values() for p in variants.values()}
    assert used == {"CPUExecutionProvider"}
    service = results["stages"]["service"]["result"]
    assert service["providers_in_use"] == {f"{DEFAULT_MODEL}/1": ["CPUExecutionProvider"]}


@pytest.mark.slow
def test_dry_run_times_fp32_and_fp16_over_the_grid(
    dry_run: tuple[Path, dict[str, Any], float],
) -> None:
    _, results, _ = dry_run
    ort = results["stages"]["onnxruntime"]["result"]
    ran = {(c["precision"], c["batch"], c["tokens"]) for c in ort["cells"]}
    assert {("fp32", 1, 16), ("fp16", 1, 16)} <= ran  # short sets first: never cut
    for cell in ort["cells"]:
        variants = {k: v for k, v in cell["variants"].items() if k != "reference"}
        assert set(variants) == {"cpu", "service-cuda", "raw-cuda-run", "raw-cuda-device"}
        assert all(v["matches_reference"] and v["items_per_second"] > 0 for v in variants.values())
        if cell["precision"] == "fp16":  # converted now: not the fp32 graph, but close to it
            assert 0 < cell["fp16_vs_fp32_max_abs_diff"] < 0.05
    torch = results["stages"]["torch"]["result"]
    assert torch["device"] == "cpu" and torch["cells"]
    for cell in torch["cells"]:
        assert cell["fp32"]["runs"] >= 3 and cell["fp16"]["runs"] >= 3
        assert 0 < cell["fp16_max_abs_diff"] < 0.05


@pytest.mark.slow
def test_dry_run_sweep_writes_its_table_and_tarball(
    dry_run: tuple[Path, dict[str, Any], float],
) -> None:
    out, results, _ = dry_run
    result = results["stages"]["sweep"]["result"]
    assert result["preset"].endswith("tiny.toml") and result["runs"] == 20
    assert "--stack" in result["command"] and result["stacked"]
    md = (out / "sweep.md").read_text()
    assert f"{len(result['finished'])} of 20 runs finished" in md
    with tarfile.open(out / "sweep.tar.gz") as tar:
        names = tar.getnames()
    finished = {n.split("/")[1] for n in names if n.endswith("metrics.json")}
    assert finished == set(result["finished"])
    if result["complete_ks"]:
        assert "Test signal loss" in md and any(n.endswith("summary.md") for n in names)


@pytest.mark.slow
def test_sweep_is_stopped_at_its_deadline_and_keeps_what_finished(tmp_path: Path) -> None:
    context = Context(tmp_path / "out", tmp_path / "work", tmp_path / "none", TINY, True)
    context.out.mkdir()
    started = time.monotonic()
    result = sweep(context, time.monotonic() + 1.0)  # torch's import alone takes longer
    assert time.monotonic() - started < 20
    assert result["stopped_at_deadline"] and result["returncode"] != 0
    assert len(result["finished"]) < result["runs"] and not result["complete_ks"]
    md = (context.out / "sweep.md").read_text()
    assert "stopped at the stage's deadline" in md and "No k has all its runs" in md


def test_stage_deadlines_share_the_budget() -> None:
    first, last = gpu_all.STAGES[1], gpu_all.STAGES[-1]
    assert gpu_all.stage_deadline(100, 0, 10, first, last=False) == 10 + 100 * first.share
    assert gpu_all.stage_deadline(100, 0, 90, first, last=False) == 97  # the reserve kept
    assert gpu_all.stage_deadline(100, 0, 20, last, last=True) == 97


@pytest.mark.slow
def test_without_a_gpu_each_gpu_stage_is_skipped_with_its_reason(tmp_path: Path) -> None:
    args = ["run", str(tmp_path / "out"), "--budget", "20", "--work", str(tmp_path / "work")]
    assert gpu_all.main(args) == 0
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    stages = results["stages"]
    if stages["environment"]["result"]["torch_sees_gpu"]:
        pytest.skip("torch sees a GPU here; this test checks what is recorded without one (CI)")
    assert stages["environment"]["status"] == "ran"
    assert "has no CUDA provider" in stages["onnxruntime"]["reason"]
    assert "sees no GPU" in stages["torch"]["reason"]
    assert "CUDA" in stages["service"]["reason"] or "missing here" in stages["service"]["reason"]
    assert "sees no GPU" in stages["sweep"]["reason"]
    md = (tmp_path / "out" / "gpu.md").read_text()
    assert "not GPU figures" not in md and "| torch | skipped |" in md


def test_a_rerun_can_choose_its_stages(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", str(out), "--dry-run-cpu", "--budget", "10", "--stages", "environment"]
    assert gpu_all.main([*args, "--work", str(tmp_path / "work")]) == 0
    stages = json.loads((out / "gpu.json").read_text())["stages"]
    assert stages["environment"]["status"] == "ran"
    assert stages["environment"]["share_seconds"] > 9  # the last chosen stage gets the rest
    assert all(
        s["status"] == "skipped" and "not chosen" in s["reason"]
        for name, s in stages.items()
        if name != "environment"
    )
    with pytest.raises(SystemExit):
        gpu_all.main([*args[:-1], "environment,typo"])
