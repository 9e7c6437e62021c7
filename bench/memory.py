"""``make bench-memory``: memory and time per model run, against tokens per item and batch size.

    python -m bench.memory [--baseline DIR] [--out results/bench] [--quick]

``--baseline DIR`` is another checkout (``git worktree add /tmp/before COMMIT``): everything is
measured for it ("before": its graphs, its ``service`` code) and for this checkout ("after"),
side by side in one run. Each side's wide model (``knn-wide384``, ``configs/bench/wide384.toml``)
is exported by that side's own export code (``bench.serve.prepare_repository``). Sections:

1. **Model runs** (``bench.memrun``, a fresh process per cell, the side's ``OnnxBackend``; raw
   ONNX Runtime with its default options on this checkout's graph beside them): peak and
   steady RSS and ms per run at 128, 512, 1,024 and 2,048 tokens per item, batch 1, 16 and the
   batcher's largest run (``max_batch_size`` 64 items, ``max_batch_tokens`` 32,768 padded
   tokens).
2. **The server** (``python -m service``, defaults, the default and the wide model): the same
   cells as ``.npy`` requests, the server's peak RSS during each and its RSS after.
3. **The probe** of issue 15: the side's committed repository behind ``python -m service`` with
   its defaults, one 16 x 2,048-token ``.npy`` request to each model, then a second round.
4. **Session options** (this checkout's graphs): ONNX Runtime's arena options, RSS over two
   probe rounds in a process holding all six committed models, and ms per run against today's
   options, alternating in one process.
5. **Throughput at 128 tokens**: ms per model run, before against after, alternating in one
   process (each side's graph with each side's session options), and the in-process service
   (``bench.inproc``, each side's code and models, rounds alternating).

RSS is the process's resident set (``/proc``); peaks are ``VmHWM`` after a reset. Memory is
steady from run to run; times on a shared machine are not, so every time comparison is a ratio
measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import memory_report
from bench.process import ROOT, running_server
from bench.procstat import peak_rss_bytes, reset_peaks, tree
from bench.serve import DEFAULT_MODEL, WIDE_MODEL, machine, write_body, write_results

TOKENS = (128, 512, 1024, 2048)
MAX_BATCH_ITEMS, MAX_BATCH_TOKENS = 64, 32768  # the service's defaults
PROBE = (16, 2048)
MIB = 1 << 20
SHARED = {"arena": "shared", "mem_pattern": False}
OPTIONS: dict[str, dict[str, Any]] = {
    "one arena per session (ONNX Runtime's default)": {"arena": "session"},
    "one arena per session, no memory pattern": {"arena": "session", "mem_pattern": False},
    "one arena per session, shrunk after every run": {"arena": "session", "shrink": "always"},
    "one arena per session, no pattern, shrunk after runs >= 8,192 tokens": {
        "arena": "session",
        "mem_pattern": False,
        "shrink": 8192,
    },
    "one shared arena": {"arena": "shared"},
    "one shared arena, no memory pattern": SHARED,
    "one shared arena (extend as requested), no memory pattern": SHARED
    | {"extend": "same_as_requested"},
    "one shared arena, no pattern, shrunk after runs >= 8,192 tokens": SHARED | {"shrink": 8192},
    "no arena": {"arena": "none"},
}
TODAY = "one arena per session (ONNX Runtime's default)"


@dataclass(frozen=True)
class Side:
    """One checkout as measured: its code, its committed models, its benchmark models."""

    name: str
    checkout: Path
    bench_repository: Path

    @property
    def repository(self) -> Path:
        return self.checkout / "model_repository"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.checkout)}

    def model(self, name: str) -> Path:
        folder = self.repository if name != WIDE_MODEL else self.bench_repository
        return folder / name / "1" / "model.onnx"


def budget(tokens: int) -> int:
    """Items in the batcher's largest run of items this long."""
    return min(MAX_BATCH_ITEMS, MAX_BATCH_TOKENS // tokens)


def batches(tokens: int, quick: bool) -> list[int]:
    return sorted({1, 16, budget(tokens)}) if not quick else [16]


def prepare(name: str, checkout: Path, work: Path) -> Side:
    """The side's benchmark repository: its default model and its export of the wide model."""
    root = work / name
    code = "import sys; from pathlib import Path; from bench.serve import prepare_repository; "
    code += "prepare_repository(Path(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run([sys.executable, "-c", code, str(root)], cwd=checkout, env=env, check=True)
    return Side(name, checkout, root / "model_repository")


def memrun(side: Side, spec: dict[str, Any]) -> dict[str, Any]:
    """``bench.memrun`` in a fresh process, the side's code first on the path."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.memrun", json.dumps(spec)],
        cwd=ROOT,
        env={**side.env(), "PYTHONPATH": f"{side.checkout}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.memrun ({side.name}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def model_runs(sides: list[Side], models: list[str], quick: bool) -> list[dict[str, Any]]:
    """Section 1: a fresh process per (side, model, tokens, batch)."""
    rows = []
    after = sides[-1]
    for model in models:
        for tokens in TOKENS:
            for batch in batches(tokens, quick):
                row: dict[str, Any] = {"model": model, "tokens": tokens, "batch": batch}
                runs = 5 if batch * tokens <= 8192 else 2
                step = {"shape": [batch, tokens], "runs": runs}
                kinds = [(s.name, s, {"kind": "backend"}) for s in sides]
                kinds.insert(-1, ("raw onnxruntime", after, {"kind": "plain"}))
                for label, side, session in kinds:
                    spec = {"models": [{"path": str(side.model(model)), "session": session}]}
                    out = memrun(side, spec | {"steps": [step]})
                    loaded, measured = out["rss_loaded_mib"], out["steps"][0]
                    row[label] = {
                        "loaded_mib": loaded,
                        "peak_mib": measured["peak_mib"],
                        "rss_after_mib": measured["rss_after_mib"],
                        "ms_per_run": measured["ms_per_run"][0],
                    }
                print(f"model runs {row}", flush=True)
                rows.append(row)
    return rows


def post_npy(url: str, model: str, x: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = write_body(folder, "npy", x)
    request = urllib.request.Request(
        f"{url}/models/{model}/pool",
        data=body.path.read_bytes(),
        headers={"Content-Type": body.content_type},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
    body.path.unlink()


def rss_bytes(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return next(
        int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("VmRSS")
    )


def server_requests(
    side: Side,
    repository: Path,
    models: list[str],
    shapes: list[tuple[str, int, int]],
    tmp: Path,
    at_once: bool = False,
) -> dict[str, Any]:
    """One server (the side's code, ``python -m service`` defaults): ``shapes`` as .npy
    requests to each of ``models`` in turn (``at_once``: to all of them concurrently); RSS at
    start, peak during and RSS after each request (each shape, at once)."""
    rng = np.random.default_rng(0)
    flags = ["--models", ",".join(models), "--default-model", models[0]]
    with running_server(repository, flags, cwd=side.checkout, env=side.env()) as (url, process):
        dims = {
            m: json.loads((repository / m / "1" / "manifest.json").read_text())["input_dim"]
            for m in models
        }
        out: dict[str, Any] = {"rss_start_mib": rss_bytes(process.pid) / MIB, "requests": []}
        overall = 0
        for label, batch, tokens in shapes:
            for group in [models] if at_once else [[m] for m in models]:
                xs = {m: rng.standard_normal((batch, tokens, dims[m]), np.float32) for m in group}
                pids = tree(process.pid)
                reset_peaks(pids)
                with ThreadPoolExecutor(len(group)) as pool:
                    jobs = [pool.submit(post_npy, url, m, xs[m], tmp / m) for m in group]
                    for job in jobs:
                        job.result()
                peak = peak_rss_bytes(pids)
                model = "all at once" if at_once else group[0]
                overall = max(overall, peak)
                out["requests"].append(
                    {
                        "label": label,
                        "model": model,
                        "shape": [batch, tokens],
                        "peak_mib": peak / MIB,
                        "rss_after_mib": rss_bytes(process.pid) / MIB,
                    }
                )
                print(f"server {side.name} {out['requests'][-1]}", flush=True)
        out["peak_mib"] = overall / MIB
    return out


def server_cells(sides: list[Side], models: list[str], quick: bool, tmp: Path) -> dict[str, Any]:
    """Section 2: per side, model and batch kind, a fresh server and the token counts in
    increasing order."""
    out: dict[str, Any] = {}
    for side in sides:
        for model in models:
            for kind in ("1", "16", "largest run") if not quick else ("16",):
                shapes = []
                for tokens in TOKENS:
                    batch = budget(tokens) if kind == "largest run" else int(kind)
                    shapes.append((f"{batch}x{tokens}", batch, tokens))
                repo = side.bench_repository
                out[f"{side.name}|{model}|{kind}"] = server_requests(
                    side, repo, [model], shapes, tmp
                )
    return out


def probe(sides: list[Side], tmp: Path) -> dict[str, Any]:
    """Section 3: the issue's probe against each side's committed repository."""
    out = {}
    for side in sides:
        names = sorted(p.parent.parent.name for p in side.repository.glob("*/1/model.onnx"))
        names.remove(DEFAULT_MODEL)
        batch, tokens = PROBE
        shapes = [(f"round {r}", batch, tokens) for r in (1, 2)]
        models = [DEFAULT_MODEL, *names]
        out[side.name] = server_requests(side, side.repository, models, shapes, tmp)
        out[f"{side.name}, all models at once"] = server_requests(
            side, side.repository, models, shapes, tmp, at_once=True
        )
    return out


def session_options(after: Side, quick: bool) -> dict[str, Any]:
    """Section 4: memory per option (a process per option, six models, two probe rounds) and
    ms per run against today's options (one process, alternating)."""
    models = sorted(str(p) for p in after.repository.glob("*/1/model.onnx"))
    memory = {}
    for name, options in OPTIONS.items():
        spec = {
            "models": [{"path": m, "session": {"kind": "plain"} | options} for m in models],
            "steps": [{"label": f"probe {r}", "shape": list(PROBE)} for r in (1, 2)],
        }
        memory[name] = memrun(after, spec)
        print(f"options {name}: {memory[name]}", flush=True)
    timing = {}
    for model in (DEFAULT_MODEL, WIDE_MODEL):
        path = str(after.model(model))
        sessions = [{"path": path, "session": {"kind": "plain"} | o} for o in OPTIONS.values()]
        shapes = [(1, 128), (8, 128), (64, 128), (16, 512), (16, 2048)][: 3 if quick else 5]
        steps = [{"shape": [b, n], "runs": max(5, 60000 // (b * n))} for b, n in shapes]
        timing[model] = memrun(after, {"models": sessions, "steps": steps})
        print(f"options timing {model}: {timing[model]}", flush=True)
    return {"memory": memory, "timing": timing, "names": list(OPTIONS)}


def throughput(sides: list[Side], quick: bool) -> dict[str, Any]:
    """Section 5: before against after at 128 tokens per item."""
    before, after = sides
    out: dict[str, Any] = {"model_runs": {}, "service": {}}
    for model in (DEFAULT_MODEL, WIDE_MODEL):
        # The baseline's session options are ONNX Runtime's defaults with idle threads not
        # spinning (service/backend.py until issue 15): "plain" without options.
        spec = {
            "models": [
                {"path": str(before.model(model)), "session": {"kind": "plain"}},
                {"path": str(after.model(model)), "session": {"kind": "backend"}},
            ],
            "steps": [{"shape": [b, 128], "runs": max(20, 40000 // (b * 128))} for b in (1, 8, 64)],
        }
        out["model_runs"][model] = memrun(after, spec)
        print(f"throughput {model}: {out['model_runs'][model]}", flush=True)
    from bench.inproc import measure_in  # its own process per round, like its --baseline

    rounds = 1 if quick else 5
    for items in (1, 8):
        argv = ["--items", str(items), "--tokens", "128", "--requests", "1500", "--warmup", "100"]
        runs: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(rounds):
            for side in sides:
                result = measure_in(side.checkout, [*argv, "--repository", str(side.repository)])
                runs[side.name].append(result["requests_per_second"])
        out["service"][str(items)] = runs
        print(f"throughput service [{items}, 128]: {runs}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--baseline", type=Path, help="a checkout to measure as 'before'")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-memory")
    parser.add_argument("--quick", action="store_true", help="batch 16 only, fewer timings")
    args = parser.parse_args(argv)
    sides = [prepare("after", ROOT, args.work)]
    if args.baseline is not None:
        sides.insert(0, prepare("before", args.baseline.resolve(), args.work))
    models = [DEFAULT_MODEL, WIDE_MODEL]
    results: dict[str, Any] = {
        "machine": machine() | {"command": "python -m bench.memory " + " ".join(sys.argv[1:])},
        "sides": {s.name: str(s.checkout) for s in sides},
    }
    tmp = args.work / "bodies"
    tmp.mkdir(parents=True, exist_ok=True)
    results["model_runs"] = model_runs(sides, models, args.quick)
    results["server"] = server_cells(sides, models, args.quick, tmp)
    results["probe"] = probe(sides, tmp)
    results["session_options"] = session_options(sides[-1], args.quick)
    if len(sides) == 2:
        results["throughput"] = throughput(sides, args.quick)
    shutil.rmtree(tmp, ignore_errors=True)
    name = "memory-quick" if args.quick else "memory"
    write_results(args.out, name, results, memory_report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
