"""The measured batch policy: the choice from a curve, the measurement with a fake model and an
injected clock, runs split at the preferred size, and the pins (settings, manifest, off)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.core.batching import Batcher, BatchLimits
from service.core.policy import decide, measured, probe
from service.settings import Settings
from tests.service.server import REPOSITORY, STARTUP_SECONDS
from tests.service.test_batching import fake_model, job


def test_a_falling_curve_prefers_its_largest_batch_near_the_best() -> None:
    wide = [(1, 900.0), (2, 1500.0), (4, 2300.0), (8, 2790.0), (16, 2700.0), (64, 1962.0)]
    assert decide([wide]) == 16  # 2,700 is within 5% of 2,790: fewer runs for the same items/s
    assert decide([wide], tolerance=0.01) == 8  # within 1%: only the best itself
    # a peak with smaller batches near it: the largest of those within 5%, not the smallest
    assert decide([[(4, 2700.0), (8, 2790.0), (16, 2600.0), (32, 2000.0)]]) == 8
    assert decide([[(1, 10.0), (8, 100.0), (64, 97.0)]]) is None  # flat within 5%: the caps
    assert decide([[(1, 10.0), (8, 50.0), (64, 100.0)]]) is None  # still rising: the caps
    assert decide([[(8, 100.0)]]) is None  # one size: nothing to choose


def test_sizes_are_compared_round_by_round() -> None:
    """Each round's sizes are timed together, under the same load: a batch is preferred only
    if it beats the largest in every round, and the choice comes from the medians."""
    steady = [(8, 1000.0), (16, 980.0), (64, 900.0)]
    assert decide([steady, steady, steady]) == 16
    # a round slowed as a whole (other work on the machine) still shows the same shape
    slowed = [(b, ips / 3) for b, ips in steady]
    assert decide([steady, slowed, steady]) == 16
    # one round whose batch 16 did not beat the largest: only 8 beat it in every round
    assert decide([steady, [(8, 1000.0), (16, 910.0), (64, 900.0)], steady]) == 8
    # each size's fastest run would show a fall here (8: 1,000 and 64: 900), yet no round on
    # its own does: the rounds disagree, and the model batches up to the caps
    assert decide([[(8, 1000.0), (64, 990.0)], [(8, 910.0), (64, 900.0)]]) is None
    # the median, not the fastest run: one lucky run of 8 does not outweigh 16
    lucky = [(8, 1200.0), (16, 980.0), (64, 900.0)]
    assert decide([steady, lucky, steady]) == 16


def test_measure_times_each_size_and_keeps_the_fastest_run() -> None:
    """A fake model whose run costs 1 ms + 0.1 ms per item up to 8 items and 0.5 ms per item
    beyond (the caches), with one slow outlier: the policy prefers 8 items of 32 tokens."""
    now = [0.0]
    calls: list[int] = []

    def clock() -> float:
        return now[0]

    def run(x: np.ndarray, mask: np.ndarray) -> None:
        b = len(x)
        calls.append(b)
        cost = 0.001 + 0.0001 * min(b, 8) + 0.0005 * max(0, b - 8)
        if len(calls) == 20:
            cost *= 50  # another process took the core once: the fastest run ignores it
        now[0] += cost

    policy = measured(probe(run, 16, 64, 4096, 32, budget_seconds=0.05, clock=clock), 32)
    assert [b for b, _ in policy.curve] == [1, 2, 4, 8, 16, 32, 64] and policy.rounds >= 3
    assert policy.preferred_tokens == 8 * 32 and policy.preferred_items == 8
    assert policy.curve[3][1] == pytest.approx(8 / 0.0018)
    assert calls.count(64) >= 1 + 3 * 3  # a warm-up run, then 3 per round, at least 3 rounds


def test_with_instances_each_timed_run_is_that_many_runs_at_once() -> None:
    """Two instances: every timed run is two calls in flight together (from two threads), and
    the curve counts both runs' items. The clock is injected: a pair of runs that are in the
    model together takes 1 ms (the time a real pair would overlap), whatever the machine's load."""
    lock, inside, most, calls, now = threading.Lock(), [0], [0], [0], [0.0]
    both = threading.Barrier(2, timeout=5)  # a call returns only once its partner is in too

    def run(x: np.ndarray, mask: np.ndarray) -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            calls[0] += 1
        if both.wait() == 0:  # one of the pair moves the clock for both
            now[0] += 0.001
        both.wait()  # neither returns before the clock has moved
        with lock:
            inside[0] -= 1

    rounds = probe(run, 4, 4, 4096, 8, budget_seconds=0.0, clock=lambda: now[0], instances=2)
    policy = measured(rounds, 8, 2)
    assert most[0] == 2 and calls[0] % 2 == 0 and policy.runs_at_once == 2
    assert [b for b, _ in policy.curve] == [1, 2, 4]
    # two runs of 4 items in 1 ms: 2 x 4 / 0.001 items/s, not 4 / 0.001
    assert policy.curve[2][1] == pytest.approx(8_000)


def test_rounds_that_disagree_prefer_nothing() -> None:
    """The same falling model, but one round taken while other work held the core during every
    batch below the largest: that round's curve rises to the largest batch, so the measurement
    does not agree with itself and the model batches up to the caps."""
    now = [0.0]
    calls: list[int] = []

    def run(x: np.ndarray, mask: np.ndarray) -> None:
        b = len(x)
        calls.append(b)
        cost = 0.001 + 0.0001 * min(b, 8) + 0.0005 * max(0, b - 8)
        if 7 + 21 < len(calls) <= 7 + 21 + 18:  # round 2, batches 1 to 32
            cost *= 50
        now[0] += cost

    policy = measured(probe(run, 16, 64, 4096, 32, budget_seconds=0.0, clock=lambda: now[0]), 32)
    assert policy.preferred_tokens is None and policy.source == "measured"
    assert policy.rounds == 3
    # the fastest runs alone still show the fall: it is the disagreement that decides
    assert decide([list(policy.curve)]) == 8


def test_a_deep_queue_runs_in_batches_of_the_preferred_size() -> None:
    limits = BatchLimits(64, 32_768, 0.0, 256, preferred_tokens=8 * 128)
    pending = [job(1, 128, 0.0) for _ in range(20)]
    from service.core.batching import select_batch

    sizes = []
    while pending:
        batch = select_batch(pending, 0.0, limits)
        assert batch is not None
        sizes.append(len(batch))
        pending = [j for j in pending if j not in batch]
    assert sizes == [8, 8, 4]
    big = job(12, 128, 0.0)  # one request above the preference still runs, alone
    assert select_batch([big, job(1, 128, 0.0)], 0.0, limits) == [big]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_runs_follow_the_policy_under_load(anyio_backend: str) -> None:
    runs: list[int] = []

    def run(x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        runs.append(len(x))
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(64, 32_768, 0.0, 256, preferred_tokens=4 * 16))
    batcher.start()
    x, mask = np.ones((1, 16, 3), dtype=np.float32), np.ones((1, 16), dtype=bool)
    await asyncio.gather(*(batcher.submit(x, mask) for _ in range(40)))
    await batcher.close()
    assert sum(runs) == 40 and max(runs) == 4 and runs.count(4) >= 9


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pins_and_what_info_says(anyio_backend: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in ("knn-avg", "knn-max"):
        shutil.copytree(REPOSITORY / name, repo / name)
    manifest = repo / "knn-max" / "1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["serving"] = {"preferred_batch_tokens": 640}
    manifest.write_text(json.dumps(data))

    async def policies(**settings: object) -> dict[str, dict[str, object]]:
        app = create_app(
            Settings(model_repository=repo, default_model="knn-avg", **settings)  # type: ignore[arg-type]
        )
        async with (
            LifespanManager(app, startup_timeout=STARTUP_SECONDS),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            info = (await c.get("/info")).json()["batch_policies"]
            model = (await c.get("/models/knn-max")).json()["versions"][0]["batch_policy"]
            assert model == info["knn-max/1"]
            metrics = (await c.get("/metrics")).text
            assert 'adapool_batch_preferred_tokens{model="knn-max"} 640.0' in metrics or (
                "preferred_batch_tokens" in settings
            )
            result: dict[str, dict[str, object]] = info
            return result

    measured = await policies(batch_probe_seconds=0.05)
    assert measured["knn-max/1"]["source"] == "manifest"
    assert measured["knn-max/1"]["preferred_tokens"] == 640
    avg = measured["knn-avg/1"]
    assert avg["source"] == "measured" and avg["probe_tokens"] == 128
    assert avg["runs_at_once"] == 2  # the default instances, as the server runs them
    assert [p["batch"] for p in avg["curve"]] == [1, 2, 4, 8, 16, 32, 64]  # type: ignore[index, union-attr]
    pinned = await policies(preferred_batch_tokens=256)
    assert {p["source"] for p in pinned.values()} == {"settings"}
    off = await policies(batch_policy="off")
    assert off["knn-avg/1"] == {
        "source": "off",
        "preferred_tokens": None,
        "preferred_items": None,
        "probe_tokens": 0,
        "curve": [],
        "runs_at_once": 1,
        "rounds": 0,
    }
