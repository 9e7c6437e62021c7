"""How many items a model run should hold, measured on the machine the server runs on.

A model's throughput (items per second) depends on the batch: it rises while a bigger batch
amortises the run's fixed costs, then, for wide models, falls again when a batch no longer fits
the caches (raw ONNX Runtime on a 384-dim model ran 2,790 items/s at batch 8 and 1,962 at 64 on
the development machine). :func:`probe` times the model at start-up over batch sizes 1, 2,
4, ... at one token length. When smaller batches beat the largest by more than ``tolerance``,
it prefers the largest of them within ``tolerance`` of the best: the
batcher then closes a run at that many padded tokens (``preferred_tokens``), and a deep queue
becomes several such runs instead of one of ``max_batch_size``. A model whose curve is flat or
keeps rising (the small ones) prefers nothing and batches up to the caps, as before.

Why the largest near the best and not the smallest: the curve is raw ONNX Runtime back to
back, but in the server every run also has costs of its own (the hop to the worker thread, the
merge, the split, the futures) and shares the cores with the event loop, which the probe does
not see. With its run size pinned (``make bench``, BENCHMARKS.md), the wide benchmark model's
server ran 1,173 / 1,332 / 1,360 / 1,393 items/s in runs of 8 / 16 / 32 / 64 items, where raw
ONNX Runtime in the same run had 1,821 / 1,842 / 2,029 / 1,633: the server keeps the curve's
rising side and not its fall. A preference only matters when the queue is deep, and then the
wait is the queue's, not the run's: a smaller run buys no latency there.

A preference is only taken when every round of the measurement shows it. The probe takes at
least :data:`MIN_ROUNDS` rounds over every size, and a round times all sizes within a second
or so, under whatever else the machine does then; so sizes are compared round by round
(:func:`decide`): a batch must beat the largest batch by more than ``tolerance`` in every
round. On a machine whose other work comes and goes, a single round can show any shape (one
start-up under a load average of 4 on 2 cores measured 132 items/s at batch 1 and 1,993 at
batch 2 for the default model): then the rounds disagree, and the model batches up to the
caps, which is what it did before there was a policy. A wrongly preferred small batch costs
more (the default model's batches of 64 run at 1.3x the items/s of batches of 8, and every run
has its own fixed costs in the server) than a missed one (the 7% by which the wide benchmark
model's curve falls at 64: BENCHMARKS.md). ``make bench-probe`` measures how often the choice
changes from one start to the next.

The choice can be pinned (settings, or the manifest's ``serving.preferred_batch_tokens``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

TOLERANCE = 0.05  # the largest batch within 5% of the best items/s
RUNS = 3  # per batch size and round
MIN_ROUNDS = 3  # rounds over every size, whatever the budget
Source = Literal["measured", "settings", "manifest", "off"]
Curve = list[tuple[int, float]]  # (batch, items/s)


@dataclass(frozen=True)
class BatchPolicy:
    """What a model's batcher aims for, and where that came from."""

    source: Source
    preferred_tokens: int | None  # padded tokens per run (None: the caps alone)
    probe_tokens: int = 0  # the token length the curve was measured at
    curve: tuple[tuple[int, float], ...] = field(default=())  # (batch, items/s)
    runs_at_once: int = 1  # the curve's runs in flight together (the model's instances)
    rounds: int = 0  # the probe's rounds over every size

    @property
    def preferred_items(self) -> int | None:
        """The preferred batch at the probe's token length."""
        if self.preferred_tokens is None or not self.probe_tokens:
            return None
        return max(1, self.preferred_tokens // self.probe_tokens)


def probe(
    run: Callable[[NDArray[np.float32], NDArray[np.bool_]], object],
    input_dim: int,
    max_items: int,
    max_tokens: int,
    tokens: int,
    budget_seconds: float,
    clock: Callable[[], float] = time.perf_counter,
    instances: int = 1,
) -> list[Curve]:
    """Time ``run`` on batches of 1, 2, 4, ... items of ``tokens`` tokens (within ``max_items``
    items and ``max_tokens`` padded tokens): one curve per round, (batch, items/s) for every
    size, each size's fastest of :data:`RUNS` runs.

    Rounds repeat while ``budget_seconds`` last, :data:`MIN_ROUNDS` at least. With
    ``instances`` above one, each timed run is that many runs at once, from threads of their
    own, as a loaded server runs them: a run on a share of the cores has a curve of its own (on
    the 2-core development machine, one thread per run, the wide benchmark model peaked at 4
    items and the default model kept rising to 64, where one run on both cores had peaked at 8
    and 64).
    """
    sizes = [1 << i for i in range(16) if (1 << i) <= max_items and (1 << i) * tokens <= max_tokens]
    rng = np.random.default_rng(0)
    inputs = {
        b: (
            rng.standard_normal((b, tokens, input_dim)).astype(np.float32),
            np.ones((b, tokens), dtype=bool),
        )
        for b in sizes
    }
    with ThreadPoolExecutor(instances, "probe") as pool:  # runs at once, when instances > 1

        def timed(x: NDArray[np.float32], mask: NDArray[np.bool_]) -> float:
            started = clock()
            if instances == 1:
                run(x, mask)
            else:
                for future in [pool.submit(run, x, mask) for _ in range(instances)]:
                    future.result()
            return clock() - started

        for x, mask in inputs.values():
            timed(x, mask)  # the first run of a shape allocates
        rounds: list[Curve] = []
        deadline = clock() + budget_seconds
        while len(rounds) < MIN_ROUNDS or clock() < deadline:
            curve = []
            for batch, (x, mask) in inputs.items():
                seconds = min(timed(x, mask) for _ in range(RUNS))
                curve.append((batch, instances * batch / seconds))
            rounds.append(curve)
    return rounds


def decide(rounds: list[Curve], tolerance: float = TOLERANCE) -> int | None:
    """The batch to prefer from the probe's rounds, or None for the caps alone.

    A round times every size within a second or so, under whatever else the machine is doing
    then, so the sizes are compared round by round: a batch is a candidate only if it beats the
    largest batch by more than ``tolerance`` in every round. Of the candidates, the largest
    whose median items/s over the rounds is within ``tolerance`` of the best candidate's (fewer
    runs for the server's per-run costs: see the module's docstring). No candidate (a flat or
    rising curve, or rounds that disagree): None.
    """
    sizes = [b for b, _ in rounds[0]]
    last = len(sizes) - 1
    ahead = [i for i in range(last) if all(r[i][1] * (1 - tolerance) > r[last][1] for r in rounds)]
    if not ahead:
        return None
    median = [statistics.median(r[i][1] for r in rounds) for i in range(len(sizes))]
    best = max(median[i] for i in ahead)
    return max(sizes[i] for i in ahead if median[i] >= (1 - tolerance) * best)


def measured(rounds: list[Curve], tokens: int, instances: int = 1) -> BatchPolicy:
    """The policy from :func:`probe`'s ``rounds`` at ``tokens`` tokens (:func:`decide`); its
    curve is each size's fastest run over all rounds (other work only ever slows a run down)."""
    curve = [(b, max(r[i][1] for r in rounds)) for i, (b, _) in enumerate(rounds[0])]
    preferred = decide(rounds)
    return BatchPolicy(
        "measured",
        preferred * tokens if preferred is not None else None,
        tokens,
        tuple(curve),
        instances,
        len(rounds),
    )
