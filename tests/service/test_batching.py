"""The batching policy with an injected clock, and the batcher with a fake model run."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from service.core.batching import (
    HOLD_SECONDS,
    Arrays,
    Batcher,
    BatchLimits,
    Job,
    Outputs,
    finite_rows,
    merge,
    select_batch,
    split,
)
from service.errors import ClientGone, InferenceFailed, NotReady, Overloaded

pytestmark = pytest.mark.anyio

LIMITS = BatchLimits(max_batch_size=8, max_batch_tokens=400, max_wait=0.010, max_queue=4)


def job(items: int, length: int, enqueued: float, dim: int = 2) -> Job:
    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
    finally:
        loop.close()
    x = np.full((items, length, dim), float(length), dtype=np.float32)
    return Job(x, np.ones((items, length), dtype=bool), enqueued, future)


def test_waits_until_the_deadline_then_runs() -> None:
    pending = [job(1, 10, enqueued=100.0)]
    assert select_batch(pending, now=100.005, limits=LIMITS) is None
    assert select_batch(pending, now=100.010, limits=LIMITS) == pending


def test_runs_at_once_when_full() -> None:
    pending = [job(4, 10, 100.0), job(4, 10, 100.001)]
    assert select_batch(pending, now=100.001, limits=LIMITS) == pending


def test_runs_at_once_when_the_token_budget_is_reached() -> None:
    pending = [job(2, 100, 100.0), job(2, 100, 100.0)]  # 4 x 100 padded tokens = 400
    assert select_batch(pending, now=100.0, limits=LIMITS) == pending


def test_groups_similar_lengths_and_leaves_the_rest() -> None:
    """Oldest first; then the closest lengths while the token budget allows (no waiting when a
    job was left out: it starts the next batch)."""
    a, b, c, d = job(2, 40, 1.0), job(2, 190, 1.1), job(2, 45, 1.2), job(2, 50, 1.3)
    batch = select_batch([a, b, c, d], now=1.3, limits=LIMITS)
    assert batch == [a, c, d]  # 6 items x 50 tokens = 300; adding b would need 8 x 190


def test_an_oversized_job_runs_alone() -> None:
    big = job(20, 50, 1.0)
    assert select_batch([big, job(1, 5, 1.0)], now=1.0, limits=LIMITS) == [big]


def test_merge_and_split_are_exact() -> None:
    jobs = [job(2, 3, 0.0), job(1, 7, 0.0), job(3, 1, 0.0)]
    x, mask = merge(jobs)
    assert x.shape == (6, 7, 2) and mask.sum(1).tolist() == [3, 3, 7, 1, 1, 1]
    assert (x[0, 3:] == 0).all() and (x[2] == 7).all()
    for _ in range(3):  # padding is zeroed, whatever memory the array was given
        again, _ = merge(jobs)
        assert (again[:2, 3:] == 0).all() and (again[3:, 1:] == 0).all()
        np.testing.assert_array_equal(again, x)
    alone, alone_mask = merge(jobs[:1])  # one job: its own arrays, not a copy
    assert alone is jobs[0].embeddings and alone_mask is jobs[0].attention_mask
    pooled = np.arange(6, dtype=np.float32)[:, None].repeat(2, 1)
    weights = np.ones((6, 1, 7), dtype=np.float32)
    contributions = np.ones((6, 7, 3), dtype=np.float32)  # a token axis in another place
    arrays = {"pooled": pooled, "weights": weights, "contributions": contributions}
    parts = split(jobs, Outputs(arrays, finite_rows(arrays)), {"weights": 2, "contributions": 1})
    assert [p.arrays["pooled"].shape for p in parts] == [(2, 2), (1, 2), (3, 2)]
    assert [p.arrays["weights"].shape for p in parts] == [(2, 1, 3), (1, 1, 7), (3, 1, 1)]
    assert [p.arrays["contributions"].shape for p in parts] == [(2, 3, 3), (1, 7, 3), (3, 1, 3)]
    assert parts[2].arrays["pooled"][:, 0].tolist() == [3, 4, 5]
    assert all(p.extra is None and p.finite.all() for p in parts)


def test_finite_rows_name_the_items_whose_outputs_overflowed() -> None:
    pooled = np.ones((4, 2), dtype=np.float32)
    weights = np.full((4, 1, 3), 1 / 3, dtype=np.float32)
    pooled[1, 0] = np.nan
    weights[3, 0, 2] = np.inf
    assert finite_rows({"pooled": pooled, "weights": weights}).tolist() == [1, 0, 1, 0]


@dataclass
class Numbered:
    """An extra result: each row is its item's number in the run."""

    values: np.ndarray

    def rows(self, index: slice) -> Numbered:
        return Numbered(self.values[index])


def test_split_gives_each_job_its_rows_of_the_extra_result() -> None:
    jobs = [job(2, 3, 0.0), job(1, 7, 0.0), job(3, 1, 0.0)]
    _, mask = merge(jobs)
    arrays = fake_model(np.zeros((*mask.shape, 2), np.float32), mask)
    run = Outputs(arrays, finite_rows(arrays), Numbered(np.arange(6)))
    parts = split(jobs, run, {"weights": 2})
    assert [p.extra.values.tolist() for p in parts if p.extra] == [[0, 1], [2], [3, 4, 5]]


def fake_model(x: np.ndarray, mask: np.ndarray) -> Arrays:
    """pooled = masked mean; weights = uniform over real tokens; rows independent."""
    w = mask / mask.sum(1, keepdims=True)
    pooled = (w[..., None] * x).sum(1).astype(np.float32)
    return {"pooled": pooled, "weights": w[:, None, :].astype(np.float32)}


async def test_concurrent_requests_are_batched_and_split_back() -> None:
    runs: list[int] = []

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        runs.append(x.shape[0])
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(64, 10_000, 0.05, 100))
    batcher.start()
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, n, 3)).astype(np.float32) for n in rng.integers(1, 30, 20)]
    results = await asyncio.gather(
        *(batcher.submit(x, np.ones(x.shape[:2], dtype=bool)) for x in inputs)
    )
    await batcher.close()
    assert sum(runs) == 20 and len(runs) < 20  # merged into fewer runs
    for x, out in zip(inputs, results, strict=True):
        np.testing.assert_allclose(out.arrays["pooled"][0], x[0].mean(0), rtol=1e-5, atol=1e-6)
        assert out.arrays["weights"].shape == (1, 1, x.shape[1])


async def test_the_extra_result_is_made_in_the_worker_only_for_batches_that_want_it() -> None:
    threads: list[str] = []

    def extra(outputs: Arrays, mask: np.ndarray) -> Numbered:
        threads.append(threading.current_thread().name)
        return Numbered(np.arange(len(mask)))

    batcher = Batcher(fake_model, BatchLimits(64, 10_000, 0.05, 100), extra=extra)
    batcher.start()
    x = np.ones((2, 4, 3), dtype=np.float32)
    mask = np.ones((2, 4), dtype=bool)
    plain = await batcher.submit(x, mask)
    together = await asyncio.gather(
        batcher.submit(x, mask, wants_extra=True), batcher.submit(x[:1], mask[:1])
    )
    await batcher.close()
    assert plain.extra is None and len(threads) == 1 and threads[0].startswith("onnx")
    rows = [out.extra.values.tolist() for out in together if out.extra is not None]
    assert rows == [[0, 1], [2]]  # one batch: each job gets its own rows


async def test_a_failed_run_fails_only_its_batch() -> None:
    calls = 0

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(1, 10_000, 0.0, 100))  # one request per run
    batcher.start()
    x = np.ones((1, 4, 2), dtype=np.float32)
    first, second = await asyncio.gather(
        batcher.submit(x, np.ones((1, 4), dtype=bool)),
        batcher.submit(x, np.ones((1, 4), dtype=bool)),
        return_exceptions=True,
    )
    await batcher.close()
    assert isinstance(first, InferenceFailed) and "RuntimeError: boom" in first.message
    assert isinstance(second, Outputs) and second.arrays["pooled"].shape == (1, 2)


async def test_full_queue_answers_overloaded_and_dropped_clients_are_skipped() -> None:
    gate = threading.Event()
    ran: list[int] = []

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        gate.wait(5)
        ran.append(x.shape[0])
        return fake_model(x, mask)

    depths: list[int] = []
    limits = BatchLimits(1, 10_000, 0.0, 2)
    batcher = Batcher(run, limits, retry_after_seconds=7, on_depth=depths.append)
    batcher.start()
    x, mask = np.ones((1, 2, 2), dtype=np.float32), np.ones((1, 2), dtype=bool)
    running = asyncio.create_task(batcher.submit(x, mask))
    await asyncio.sleep(0.05)  # the first request is now running (blocked on the gate)

    async def gone() -> bool:
        return True

    # Two clients that leave: dropped when their batch is prepared, before any model run.
    dropped = [asyncio.create_task(batcher.submit(x, mask, gone)) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert all(isinstance(d.exception(), ClientGone) for d in dropped)
    # The next batch is prepared while the model runs; two more wait in the queue: full.
    queued = []
    for _ in range(3):
        queued.append(asyncio.create_task(batcher.submit(x, mask)))
        await asyncio.sleep(0.02)
    with pytest.raises(Overloaded, match="queue is full") as refused:
        batcher.admit()  # the check before a body is read: the same refusal as submit's
    assert refused.value.headers == {"Retry-After": "7"}
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.submit(x, mask)
    assert batcher.depth == 2 and depths[-1] == 2  # the batcher reports its own depth
    gate.set()
    await running
    results = await asyncio.gather(*queued)
    await batcher.close()
    assert ran == [1, 1, 1, 1]  # the disconnected clients never reached the model
    assert all(r.arrays["pooled"].shape == (1, 2) for r in results)
    assert depths[0] == 0 and depths[-1] == 0


async def test_the_next_batch_is_prepared_while_the_model_runs() -> None:
    """Runs follow each other without the model waiting for the event loop: the batch after
    a running one is chosen (complete) and merged meanwhile, and starts as soon as it ends."""
    gate, starts = threading.Event(), []

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        starts.append(x.shape[0])
        gate.wait(5)
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(2, 10_000, 0.0, 100))
    batcher.start()
    x, mask = np.ones((1, 3, 2), dtype=np.float32), np.ones((1, 3), dtype=bool)
    first = asyncio.create_task(batcher.submit(x, mask))
    await asyncio.sleep(0.05)
    later = []
    for _ in range(5):
        later.append(asyncio.create_task(batcher.submit(x, mask)))
        await asyncio.sleep(0.02)
    assert batcher.depth == 3  # two of the five are the prepared next batch
    gate.set()
    await asyncio.gather(first, *later)
    await batcher.close()
    assert starts == [1, 2, 2, 1]  # complete batches of 2 while busy; the rest when free


async def test_the_next_run_starts_while_the_event_loop_is_busy() -> None:
    """A thread that ends a run takes the prepared next one itself: the model does not wait for
    a turn of the event loop (under load a turn takes milliseconds). Here the loop is blocked
    for 0.5 s while the first run ends, and the second run starts within that time."""
    gate, starts = threading.Event(), []

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        starts.append(time.monotonic())
        gate.wait(5)
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(1, 10_000, 0.0, 100))
    batcher.start()
    x, mask = np.ones((1, 3, 2), dtype=np.float32), np.ones((1, 3), dtype=bool)
    tasks = [asyncio.create_task(batcher.submit(x, mask)) for _ in range(2)]
    await asyncio.sleep(0.05)  # the first runs (blocked on the gate), the second is prepared
    assert len(starts) == 1
    threading.Timer(0.05, gate.set).start()
    time.sleep(0.5)  # the event loop is busy: nothing of the batcher's runs on it meanwhile
    unblocked = time.monotonic()
    await asyncio.gather(*tasks)
    await batcher.close()
    assert len(starts) == 2 and starts[1] < unblocked


async def test_a_light_load_keeps_to_one_model_thread() -> None:
    """One request at a time with two instances: every run in the same thread (its caches and
    its malloc arena); a second thread starts only when two runs are wanted at once."""
    threads: list[str] = []

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        threads.append(threading.current_thread().name)
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(1, 10_000, 0.0, 100), instances=2)
    batcher.start()
    x, mask = np.ones((1, 3, 2), dtype=np.float32), np.ones((1, 3), dtype=bool)
    for _ in range(5):
        await batcher.submit(x, mask)
    await batcher.close()
    assert threads == ["onnx_0"] * 5


async def test_refuse_all_fails_the_queue_but_not_the_running_batch() -> None:
    """The end of a graceful shutdown: queued requests get NotReady, the running one (and the
    one prepared to run next) their results, and nothing is accepted afterwards."""
    gate = threading.Event()

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        gate.wait(5)
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(1, 10_000, 0.0, 10))
    batcher.start()
    x, mask = np.ones((1, 2, 2), dtype=np.float32), np.ones((1, 2), dtype=bool)
    running = asyncio.create_task(batcher.submit(x, mask))
    await asyncio.sleep(0.05)  # running now, blocked on the gate
    queued = []
    for _ in range(3):
        queued.append(asyncio.create_task(batcher.submit(x, mask)))
        await asyncio.sleep(0.02)
    assert batcher.refuse_all(NotReady("the server is shutting down")) == 2
    with pytest.raises(NotReady):
        await batcher.submit(x, mask)
    gate.set()
    assert (await running).arrays["pooled"].shape == (1, 2)
    results = await asyncio.gather(*queued, return_exceptions=True)
    await batcher.close()
    assert isinstance(results[0], Outputs)  # prepared next: it ran
    assert all(isinstance(r, NotReady) for r in results[1:])


async def test_instances_run_batches_at_once_and_each_request_gets_its_own_rows() -> None:
    """With two instances a second batch starts while the first is still running (two worker
    threads in the model at once); a third waits for a free one. Every request gets its own
    rows back whatever order the runs end in."""
    release, inside, most = threading.Event(), [0], [0]
    lock = threading.Lock()

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        release.wait(5)
        with lock:
            inside[0] -= 1
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(1, 10_000, 0.0, 100), instances=2)
    batcher.start()
    inputs = [np.full((1, 3, 2), float(i), dtype=np.float32) for i in range(5)]
    mask = np.ones((1, 3), dtype=bool)
    tasks = [asyncio.create_task(batcher.submit(x, mask)) for x in inputs]
    await asyncio.sleep(0.1)
    assert most[0] == 2 and batcher.depth == 2  # two running, one prepared, two queued
    release.set()
    results = await asyncio.gather(*tasks)
    await batcher.close()
    assert most[0] == 2  # never a third at once
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_allclose(result.arrays["pooled"], fake_model(x, mask)["pooled"])


async def test_a_failed_run_of_one_instance_leaves_the_other_running() -> None:
    gate = threading.Event()

    def run(x: np.ndarray, mask: np.ndarray) -> Arrays:
        if x[0, 0, 0] < 0:
            raise RuntimeError("bad run")
        gate.wait(5)
        return fake_model(x, mask)

    batcher = Batcher(run, BatchLimits(1, 10_000, 0.0, 10), instances=2)
    batcher.start()
    mask = np.ones((1, 2), dtype=bool)
    good = asyncio.create_task(batcher.submit(np.ones((1, 2, 2), dtype=np.float32), mask))
    await asyncio.sleep(0.05)  # running on one instance, blocked on the gate
    with pytest.raises(InferenceFailed, match="bad run"):
        await batcher.submit(-np.ones((1, 2, 2), dtype=np.float32), mask)
    gate.set()
    assert (await good).arrays["pooled"].shape == (1, 2)
    await batcher.close()


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Batcher(fake_model, LIMITS, instances=0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_place_counts_while_its_body_is_read_and_is_taken_when_it_is_queued() -> None:
    """admit() holds a place that counts against the queue as a queued request does, until
    submit takes it (a with-block frees it if the request fails first); check() holds none."""
    clock = Clock()
    batcher = Batcher(fake_model, BatchLimits(4, 10_000, 0.0, 2), clock=clock)  # not started
    x, mask = np.ones((1, 2, 2), dtype=np.float32), np.ones((1, 2), dtype=bool)
    batcher.check()
    batcher.check()  # checking holds nothing
    first, second = batcher.admit(), batcher.admit()
    with pytest.raises(Overloaded):
        batcher.check()  # two places held: the queue of 2 is full
    with second:
        pass  # the request failed before it was queued (bad body, client gone)
    assert second.released and not second.counting
    queued = asyncio.create_task(batcher.submit(x, mask, place=first))
    await asyncio.sleep(0)
    assert batcher.depth == 1 and first.released  # the place became a queued request
    third = batcher.admit()  # one queued, one place: full again
    with pytest.raises(Overloaded):
        batcher.admit()
    # a full queue does not refuse the request whose place it holds
    also = asyncio.create_task(batcher.submit(x, mask, place=third))
    await asyncio.sleep(0)
    assert batcher.depth == 2 and not also.done()
    with pytest.raises(Overloaded):
        await batcher.submit(x, mask)  # but one without a place is checked
    batcher.start()
    await asyncio.gather(queued, also)
    await batcher.close()


async def test_a_place_stops_counting_after_hold_seconds_and_is_checked_again() -> None:
    """A slow upload cannot hold the queue: after HOLD_SECONDS its place no longer counts, and
    when it is submitted it is checked as a new request would be."""
    clock = Clock()
    batcher = Batcher(fake_model, BatchLimits(4, 10_000, 0.0, 1), clock=clock)
    x, mask = np.ones((1, 2, 2), dtype=np.float32), np.ones((1, 2), dtype=bool)
    slow = batcher.admit()
    with pytest.raises(Overloaded):
        batcher.check()
    clock.now += HOLD_SECONDS / 2
    with pytest.raises(Overloaded):
        batcher.check()  # still young: it counts
    clock.now += HOLD_SECONDS / 2 + 0.01
    fast = batcher.admit()  # the slow one no longer counts
    assert not slow.counting and not slow.released
    queued = asyncio.create_task(batcher.submit(x, mask, place=fast))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await batcher.submit(x, mask, place=slow)  # checked again: the queue is full
    assert slow.released
    batcher.start()
    await queued
    await batcher.close()


async def test_the_clients_of_a_batch_are_asked_at_once_whether_they_left() -> None:
    """Each check may wait for a turn of the event loop: the batch's clients are asked all at
    once, not one turn each (a check here returns only once all three have been asked)."""
    asked = 0
    everyone = asyncio.Event()

    async def still_here() -> bool:
        nonlocal asked
        asked += 1
        if asked == 3:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), 2)  # asked one after the other: times out
        return False

    async def left() -> bool:
        return True

    batcher = Batcher(fake_model, BatchLimits(8, 10_000, 0.0, 8))
    x, mask = np.ones((1, 2, 2), dtype=np.float32), np.ones((1, 2), dtype=bool)
    jobs = [asyncio.create_task(batcher.submit(x, mask, check)) for check in (still_here,) * 3]
    gone = asyncio.create_task(batcher.submit(x, mask, left))
    await asyncio.sleep(0)
    batcher.start()  # one batch of the four
    results = await asyncio.gather(*jobs)
    assert [len(r.arrays["pooled"]) for r in results] == [1, 1, 1]
    with pytest.raises(ClientGone):
        await gone
    await batcher.close()


async def test_a_check_that_answers_at_once_costs_no_turn_of_the_event_loop() -> None:
    """A front-end that knows its connection's state answers without a coroutine: the batch is
    prepared in the same turn (a coroutine check is still awaited, with the others at once)."""
    turns = 0
    batcher = Batcher(fake_model, BatchLimits(8, 10_000, 0.0, 8))
    x, mask = np.ones((1, 2, 2), dtype=np.float32), np.ones((1, 2), dtype=bool)

    async def coroutine_check() -> bool:
        await asyncio.sleep(0)
        return True

    jobs = [
        batcher.submit(x, mask, lambda: False),
        batcher.submit(x, mask, lambda: True),
        batcher.submit(x, mask, coroutine_check),
    ]
    tasks = [asyncio.create_task(job) for job in jobs]
    await asyncio.sleep(0)
    live_jobs = list(batcher._pending)

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    sync_only = await batcher._live(live_jobs[:2])
    assert turns == 0 and len(sync_only) == 1  # no turn passed for the two at-once checks
    assert await batcher._live(live_jobs[2:]) == []  # the coroutine one left
    counter.cancel()
    batcher.start()
    assert len((await tasks[0]).arrays["pooled"]) == 1
    for gone in tasks[1:]:
        with pytest.raises(ClientGone):
            await gone
    await batcher.close()
