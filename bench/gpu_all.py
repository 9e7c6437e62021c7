"""One call on a lent GPU machine: every GPU measurement of issue 23 inside one time budget.

    python -m bench.gpu_all prepare              # here, before the call: the models to carry
    python -m bench.gpu_all run OUT [--budget 540] [--dry-run-cpu]
    bash bench/gpu_run.sh                         # on the device: what the run tool is given

``run`` goes through five stages, each given a share of ``--budget`` seconds (the sweep, last,
gets whatever the others left) and stopped cleanly when its share is spent: a grid records
the cells it had no time for, the sweep's process is stopped (its finished runs are kept; a
rerun on the same machine resumes). After every stage
``gpu.json`` and ``gpu.md`` are rewritten, so a call killed at its limit still returns the
stages that finished. A stage that cannot run here is recorded as skipped with the reason; one
that breaks is recorded as failed with its error, and the next stage runs.

1. ``environment``: the GPU (``nvidia-smi``), torch and onnxruntime versions, and for
   TensorRT, CUDA and CPU the providers a session really runs on (``session.get_providers()``).
2. ``onnxruntime``: :mod:`bench.gpu`'s four variants (the service's IO-binding CUDA backend,
   raw CUDA ``session.run``, raw CUDA with inputs and outputs on the device, the CPU) on
   fp32 and fp16 graphs, batch 1 to 256 x tokens 128 to 2,048, short sets first.
3. ``torch``: the same models in PyTorch on the GPU, fp32 and fp16 (autocast), same grid.
4. ``service``: ``python -m service --device cuda`` with one checked request per model, its
   providers from ``GET /info``, and hey at concurrency 1 and 32 ([8, 128, D] .npy requests).
5. ``sweep``: ``python -m models.sweep --preset configs/sweep/gpu10.toml`` (``--stacked``
   where models.sweep has it) until the budget ends; the signal-loss table of every k whose
   runs all finished.

Writes into OUT (the device's ``$OUT``; at most 8 files come back, no folders are needed):
``gpu.json`` (everything), ``gpu.md`` (tables naming the GPU and providers), ``sweep.md`` and
``sweep.tar.gz`` (the sweep's results folder, each finished run's metrics.json, its log);
``bench/gpu_run.sh`` adds ``gpu.log``. Scratch (sweep runs, converted models) goes to
``--work`` (``runs/``), never OUT.

``--dry-run-cpu`` runs every stage's code on the CPU with tiny sizes and the tiny sweep preset
(a few seconds each, a test does): its figures are marked as not GPU figures.

**What the lent machine lacks** (device README, KINDS.md: one H200, torch 2.11.0+cu130, Python
3.12, onnxruntime 1.30.0, no fastapi, uvicorn or pydantic, no hey, 64 MiB carried a call). Its
package list names onnxruntime, not onnxruntime-gpu: the CPU build, expected (the environment
stage records what it has). onnxruntime-gpu cannot travel: measured here on 2026-12-02 (``pip
download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
onnxruntime-gpu==1.31.1``, the version constraints.txt pins), its wheel is 255.6 MB, four times
the 64 MiB carry limit; its CUDA provider library alone is 284 MB unpacked and 187 MB after
``zstd -15 --long=28``, so no packing makes one call carry it (it is built for CUDA 13:
libcublas.so.13, libcudart.so.13, which the machine's torch wheels provide). Splitting it over
several calls to a machine kept warm is untried (each call re-sends the tree and counts device
time; the machine goes back after 30 s idle). So without a GPU build of onnxruntime on the
machine the ``onnxruntime`` stage is skipped (reason recorded), and so is the ``service`` stage
(``--device cuda`` requires CUDA; it would also need 12 wheels carried, 3.9 MB at the versions
constraints.txt pins: fastapi, starlette, pydantic, pydantic-core, pydantic-settings,
typing-inspection, annotated-types, python-dotenv, annotated-doc, uvicorn, httptools, orjson;
and hey's .deb, 2.1 MB), while the ``torch`` and ``sweep`` stages run on the GPU.
export.precision's onnxconverter-common is not there either: ``prepare`` makes the fp16 graphs
here.

**The call, for a session that is lent a GPU** (``status``: can_start_another true):

1. Here: ``python -m bench.gpu_all prepare`` (writes ``runs/gpu/``: the default and the wide
   model, fp32 and fp16, with their checkpoints: 4.4 MiB).
2. ``run`` with command ``bash bench/gpu_run.sh``, ``timeout_s`` 480, carry ``["runs/gpu"]``:
   a 420 s budget. With the machine's start (a minute or two) and the transfers that spends
   about 10 of the session's 15 minutes, leaving room for one rerun at once, on the machine
   still warm, of the stages that failed: ``BUDGET=200 STAGES=torch,sweep bash
   bench/gpu_run.sh`` with ``timeout_s`` 260 (``--stages``; the sweep resumes where it stopped).
   A stage that breaks does not end the call early (the others run and the sweep fills the
   budget), so read ``gpu.md``'s stage table before deciding on a rerun.
3. Copy the returned files (``files_at``) into ``results/gpu/``; then ``give_back``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import gpu_report
from bench.gpu import DEFAULT_MODEL, ROOT, WIDE_MODEL, Skip
from bench.gpu_stages import (
    PREPARED,
    Context,
    environment,
    onnxruntime_grid,
    service_load,
    sweep,
    torch_grid,
)

StageRun = Callable[[Context, float], dict[str, Any]]
DRY_RUN_NOTE = "dry run on the CPU with tiny sizes: these are not GPU figures"
FINISH_SECONDS = 0.03  # of the budget, kept after the sweep for the report and the tarball


@dataclass(frozen=True)
class Stage:
    name: str
    share: float  # of the whole budget; the last stage gets what is left
    run: StageRun


STAGES = (
    Stage("environment", 0.04, environment),
    Stage("onnxruntime", 0.25, onnxruntime_grid),
    Stage("torch", 0.15, torch_grid),
    Stage("service", 0.12, service_load),
    Stage("sweep", 1.0, sweep),
)
NAMES = [s.name for s in STAGES]


def stage_deadline(budget: float, started: float, now: float, stage: Stage, last: bool) -> float:
    """A stage's deadline (``time.monotonic()``): its share of the budget from now, or for the
    last stage everything up to the finishing reserve."""
    end = started + budget * (1 - FINISH_SECONDS)
    return end if last else min(end, now + stage.share * budget)


def run_stages(
    context: Context, budget: float, results: dict[str, Any], only: list[str] | None = None
) -> None:
    """Every stage in turn (or those in ``only``), each recorded in ``results["stages"]`` and
    written out after it."""
    started = time.monotonic()
    chosen = [s for s in STAGES if only is None or s.name in only]
    for stage in STAGES:
        now = time.monotonic()
        deadline = stage_deadline(budget, started, now, stage, stage == chosen[-1])
        record: dict[str, Any] = {"share_seconds": round(deadline - now, 1)}
        print(f"== {stage.name}: {deadline - now:.0f} s", flush=True)
        try:
            if stage not in chosen:
                raise Skip(f"not chosen (--stages {','.join(s.name for s in chosen)})")
            record["result"] = stage.run(context, deadline)
            record["status"] = "ran"
        except Skip as exc:
            record.update(status="skipped", reason=str(exc))
        except Exception as exc:  # one broken stage must not lose the others' figures
            record.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            record["traceback"] = traceback.format_exc().splitlines()[-12:]
        record["seconds"] = round(time.monotonic() - now, 1)
        if record["status"] != "ran":
            print(f"{stage.name} {record['status']}: {record['reason']}", flush=True)
        results["stages"][stage.name] = record
        write(context.out, results)


def write(out: Path, results: dict[str, Any]) -> None:
    (out / "gpu.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    try:
        text = gpu_report.markdown(results)
    except Exception as exc:  # the figures are in gpu.json either way; say why the tables aren't
        text = f"gpu.md could not be rendered ({type(exc).__name__}: {exc}); see gpu.json\n"
    (out / "gpu.md").write_text(text)


def prepare(folder: Path) -> int:
    """``folder``: the default and the wide model's repository (bench.serve's, exported with
    parity checked) and their fp16 graphs (export.precision), for the device to carry."""
    from bench.serve import prepare_repository
    from export.precision import convert_file

    repository = prepare_repository(folder)
    shutil.rmtree(folder / "runs", ignore_errors=True)  # the wide run: its checkpoint is kept
    (folder / "fp16").mkdir(exist_ok=True)
    for name in (DEFAULT_MODEL, WIDE_MODEL):
        target = folder / "fp16" / f"{name}.onnx"
        shutil.copyfile(repository / name / "1" / "model.onnx", target)
        convert_file(target)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    print(f"wrote {folder} ({size / 2**20:.1f} MiB): carry it as {folder.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_all", description=(__doc__ or "").split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("prepare", help="write the models to carry (here, not there)")
    made.add_argument("--folder", type=Path, default=PREPARED)
    run = commands.add_parser("run", help="every stage within --budget seconds")
    run.add_argument("out", type=Path, help="the output folder ($OUT on the device)")
    run.add_argument("--budget", type=float, default=540.0, help="seconds for every stage")
    run.add_argument("--work", type=Path, default=ROOT / "runs", help="scratch, not $OUT")
    run.add_argument("--prepared", type=Path, default=PREPARED, help="prepare's folder")
    run.add_argument("--preset", type=Path, help="sweep preset (gpu10; tiny with a dry run)")
    run.add_argument("--dry-run-cpu", action="store_true", help="tiny sizes on the CPU")
    run.add_argument(
        "--stages", help=f"comma-separated, for a rerun (default all: {','.join(NAMES)})"
    )
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args.folder)
    only = args.stages.split(",") if args.stages else None
    if only is not None and (unknown := set(only) - set(NAMES)):
        parser.error(f"--stages: unknown {sorted(unknown)}; known: {', '.join(NAMES)}")
    preset = args.preset or ROOT / "configs" / "sweep" / (
        "tiny.toml" if args.dry_run_cpu else "gpu10.toml"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    context = Context(args.out, args.work, args.prepared, preset, args.dry_run_cpu)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python -m bench.gpu_all " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget_seconds": args.budget,
        "stages": {},
    }
    if args.dry_run_cpu:
        results["dry_run_cpu"] = DRY_RUN_NOTE
    run_stages(context, args.budget, results, only)
    print((args.out / "gpu.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
