"""Training steps per second per model: one model per process (the sweep today) against a stack.

    python -m bench.stacked [--preset configs/sweep/cpu.toml] [--stack 8] [--processes 2]

Times full training steps (forward, loss, backward, Adam) on the preset's model and batch, with
random tokens of its shape, in ``--processes`` processes at once with one torch thread each
(how ``python -m models.sweep`` runs its workers on this machine):

- ``one model``: each process trains one model, as :func:`models.train.train` does;
- ``stack of S, fused``: each process trains S models in one vmapped pass
  (:class:`models.stacked.Stack`), attention by ``scaled_dot_product_attention``;
- ``stack of S, explicit``: the same with the attention written out (the math path, which
  ``vmap`` batches natively: the fused CPU kernel has no batching rule and is looped per model).

Prints and writes (``--out``, default ``results/bench/stacked.md``) model-steps per second for the
whole machine and each variant's ratio to ``one model``, for each method of ``--methods``.
``--device cuda`` times on a GPU instead (one process).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]


def time_steps(
    preset_path: str, method: str, stack: int, attention: str, steps: int, device: str
) -> float:
    """Seconds per training step of ``stack`` models (0 = one plain model), in this process."""
    import torch
    import torch.nn.functional as F

    from models.model import build_model
    from models.stacked import Stack
    from models.sweep import load_preset, make_run

    if device == "cpu":
        torch.set_num_threads(1)
    preset = load_preset(preset_path)
    config = make_run(preset, method, 8, 0, Path("unused")).config
    batch, tokens, dim = config.train.batch_size, config.data.num_vectors, config.model.input_dim
    count = max(stack, 1)
    models = [build_model(config.model).to(device) for _ in range(count)]
    x = torch.randn(count, batch, tokens, dim, device=device)
    mask = torch.ones(count, batch, tokens, dtype=torch.bool, device=device)
    width = config.model.out_dim
    y = torch.randn(count, batch, width, device=device)
    if stack == 0:
        model = models[0].train()
        optimizer = torch.optim.Adam(model.parameters(), config.train.lr)

        def step() -> None:
            loss = F.mse_loss(model(x[0], mask[0]).output, y[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

    else:
        stacked = Stack(models)
        stacked.template.set_fused_attention(attention == "fused")
        optimizer = torch.optim.Adam(list(stacked.params.values()), config.train.lr)

        def step() -> None:
            out = stacked.outputs(x, mask)
            loss = torch.stack([F.mse_loss(o, t) for o, t in zip(out, y, strict=True)]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - started) / steps


def _worker(args: tuple[str, str, int, str, int, str]) -> float:
    import warnings

    warnings.filterwarnings("ignore", message=".*batching rule.*")
    return time_steps(*args)


def measure(
    preset: str, method: str, stack: int, attention: str, steps: int, processes: int, device: str
) -> dict[str, Any]:
    """Model-steps per second of the whole machine for one variant, ``processes`` at once."""
    job = (preset, method, stack, attention, steps, device)
    if processes == 1:
        seconds = [_worker(job)]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            seconds = pool.map(_worker, [job] * processes)
    models = max(stack, 1)
    return {
        "method": method,
        "variant": "one model" if stack == 0 else f"stack of {stack}, {attention}",
        "ms_per_step": [1000 * s for s in seconds],
        "model_steps_per_second": sum(models / s for s in seconds),
    }


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [
        header,
        "",
        "| method | variant | ms per step (each process) | model-steps/s (machine) "
        "| vs one model |",
        "|---|---|---:|---:|---:|",
    ]
    base: dict[str, float] = {}
    for row in rows:
        rate = row["model_steps_per_second"]
        base.setdefault(row["method"], rate)
        ms = ", ".join(f"{m:,.0f}" for m in row["ms_per_step"])
        lines.append(
            f"| {row['method']} | {row['variant']} | {ms} | {rate:.2f} | "
            f"{rate / base[row['method']]:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stacked", description=__doc__)
    parser.add_argument("--preset", default=str(ROOT / "configs/sweep/cpu.toml"))
    parser.add_argument("--methods", default="avg,cls,adapool-ego")
    parser.add_argument("--stack", type=int, default=8, help="models per stack")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=ROOT / "results/bench/stacked.md")
    args = parser.parse_args(argv)
    processes = 1 if args.device == "cuda" else args.processes
    rows = []
    for method in args.methods.split(","):
        for stack, attention in ((0, "fused"), (args.stack, "fused"), (args.stack, "explicit")):
            row = measure(args.preset, method, stack, attention, args.steps, processes, args.device)
            print(json.dumps(row), flush=True)
            rows.append(row)
    command = "python -m bench.stacked " + " ".join(sys.argv[1:] if argv is None else argv)
    header = (
        f"`{command}` on {platform.node() or 'this machine'} ({args.device}, {processes} "
        f"process(es) at once, 1 torch thread each on CPU), {time.strftime('%Y-%m-%d %H:%M')}; "
        f"preset {Path(args.preset).name}."
    )
    text = markdown(rows, header)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
