"""Dynamic batching: queued requests are merged into one model run and split back exactly.

:func:`select_batch` is the policy, a pure function of the queue and the clock (tested with an
injected clock). :class:`Batcher` drives it on the event loop: a bounded queue (admission: 429
when full), a deadline per batch, the model runs in threads of their own (``instances`` of them
at once, each taking its next prepared run as soon as it ends one), and per-batch failure that
fails exactly that batch's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from service.errors import ClientGone, InferenceFailed, NotReady, Overloaded
from service.threads import name_this_thread


class Rows(Protocol):
    """Per-item results beyond the model's outputs (the diagnostics summary), one row per item."""

    def rows(self, index: slice) -> Rows: ...


Arrays = Mapping[str, NDArray[np.float32]]  # named outputs, batch first


@dataclass(frozen=True)
class Outputs:
    """What a run returns for its batch, and what each request gets back: its own rows.

    ``arrays`` holds every model output by name (``pooled`` (B, D), ``weights`` (B, H, N), ...),
    each request's token axes trimmed to its own length. ``finite`` says per item whether all
    its outputs are finite (a finite input can overflow inside a model).
    """

    arrays: Arrays
    finite: NDArray[np.bool_]  # (B,)
    extra: Rows | None = None  # computed in the worker thread after the model run


RunFn = Callable[[NDArray[np.float32], NDArray[np.bool_]], Arrays]
ExtraFn = Callable[[Arrays, NDArray[np.bool_]], Rows]  # (outputs, mask) -> rows
# Whether a job's client has left: at once (a front-end that knows its connection's state), or
# a coroutine (which may wait for a turn of the event loop, as Starlette's check does).
LeftFn = Callable[[], bool | Awaitable[bool]]


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int  # items per run
    max_batch_tokens: int  # padded tokens per run: items x longest item
    max_wait: float  # seconds the oldest request may wait for the batch to fill
    max_queue: int  # queued requests
    preferred_tokens: int | None = None  # close a run at this many padded tokens (policy.py)

    @property
    def token_budget(self) -> int:
        """Padded tokens a run is filled up to."""
        if self.preferred_tokens is None:
            return self.max_batch_tokens
        return min(self.max_batch_tokens, self.preferred_tokens)


@dataclass(eq=False)
class Job:
    """One request waiting for the model: its items, padded to its own longest item."""

    embeddings: NDArray[np.float32]  # (b, n, D)
    attention_mask: NDArray[np.bool_]  # (b, n)
    enqueued: float
    future: asyncio.Future[Outputs] = field(repr=False)
    is_disconnected: LeftFn | None = field(default=None, repr=False)
    wants_extra: bool = False  # this request needs the batch's extra result

    @property
    def items(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def length(self) -> int:
        return int(self.embeddings.shape[1])


def select_batch(
    pending: list[Job], now: float, limits: BatchLimits, idle: bool = True
) -> list[Job] | None:
    """The next batch to run, or None to keep waiting.

    The oldest job always goes first; others join by closeness of length (less padding) while
    the batch stays within ``max_batch_size`` items and the token budget (``max_batch_tokens``,
    or the model's ``preferred_tokens`` when smaller). The batch runs when it is full, when a
    waiting job no longer fits, or when the oldest job has waited ``max_wait``. While the model
    is busy (``idle`` false) only a batch that is already complete is taken (to be prepared
    while the model runs): one that could still grow waits for the model, so that batches
    never shrink for being chosen early.
    """
    if not pending:
        return None
    budget = limits.token_budget
    oldest = pending[0]
    batch, items, longest = [oldest], oldest.items, oldest.length
    left_out = False
    for job in sorted(pending[1:], key=lambda j: abs(j.length - oldest.length)):
        new_longest = max(longest, job.length)
        if (
            items + job.items <= limits.max_batch_size
            and (items + job.items) * new_longest <= budget
        ):
            batch.append(job)
            items, longest = items + job.items, new_longest
        else:
            left_out = True
    full = items >= limits.max_batch_size or items * longest >= budget
    if full or left_out or (idle and now - oldest.enqueued >= limits.max_wait):
        return batch
    return None


def merge(batch: list[Job]) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Stack the jobs' items into one zero-padded (B, N, D) array and its (B, N) mask.

    A batch of one job is its own arrays (no copy). Otherwise each value is written once: the
    jobs' items are copied in and only the padding after a shorter job is zeroed, instead of
    zeroing the whole array first (for a [64, 128, 384] run that doubled the merge's memory
    traffic, on the event loop).
    """
    if len(batch) == 1:
        only = batch[0]
        return np.ascontiguousarray(only.embeddings, np.float32), only.attention_mask
    n = max(job.length for job in batch)
    d = batch[0].embeddings.shape[2]
    b = sum(job.items for job in batch)
    embeddings = np.empty((b, n, d), dtype=np.float32)
    mask = np.zeros((b, n), dtype=bool)
    row = 0
    for job in batch:
        rows = slice(row, row + job.items)
        embeddings[rows, : job.length] = job.embeddings
        embeddings[rows, job.length :] = 0.0  # padding: finite, and masked out
        mask[rows, : job.length] = job.attention_mask
        row += job.items
    return embeddings, mask


def split(batch: list[Job], run: Outputs, token_axes: Mapping[str, int]) -> list[Outputs]:
    """Each job's own rows of every output, its token axes (``token_axes``: output name ->
    axis) trimmed to its length, and its rows of ``finite`` and of the extra result, if the run
    gave one (left padded: it has a mask)."""
    results, row = [], 0
    for job in batch:
        rows = slice(row, row + job.items)
        arrays = {}
        for name, array in run.arrays.items():
            part = array[rows]
            axis = token_axes.get(name)
            if axis is not None:
                index: list[slice] = [slice(None)] * part.ndim
                index[axis] = slice(0, job.length)
                part = part[tuple(index)]
            arrays[name] = part
        extra = run.extra.rows(rows) if run.extra is not None else None
        results.append(Outputs(arrays, run.finite[rows], extra))
        row += job.items
    return results


def finite_rows(arrays: Arrays) -> NDArray[np.bool_]:
    """(B,) True where every output of the item is finite."""
    rows = [np.isfinite(a).reshape(len(a), -1).all(axis=1) for a in arrays.values()]
    finite: NDArray[np.bool_] = np.logical_and.reduce(rows)
    return finite


@dataclass
class BatchStats:
    """What one run looked like, for metrics."""

    items: int
    tokens: int  # padded
    real_tokens: int
    queue_seconds: list[float]


# How long an admitted request's place counts against the queue's bound while its body is
# read (class Place).
HOLD_SECONDS = 1.0


class Place:
    """A place in a batcher's queue, held from admission (:meth:`Batcher.admit`) until the
    request is queued (:meth:`Batcher.submit` takes it) or fails; a with-block releases it.

    While held, and for at most ``HOLD_SECONDS``, it counts against ``max_queue`` as a queued
    request does: without it, every request admitted while the queue had room read its body,
    and all but the first few were then refused at submit (under a 429 storm, a burst of them
    each time a batch emptied the queue). An older place stops counting, so that slow uploads
    cannot hold the queue; such a request is checked again when it is submitted."""

    __slots__ = ("batcher", "counting", "released", "since")

    def __init__(self, batcher: Batcher, since: float) -> None:
        self.batcher = batcher
        self.since = since
        self.counting = True
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.batcher._uncount(self)

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Batcher:
    """Queues requests for one model version and runs them in merged batches.

    Admission lives here (:meth:`check`, :meth:`admit`: one refusal, :class:`Overloaded` with
    its retry hint; a :class:`Place` held while the body is read), and so does the queue's
    depth, reported through ``on_depth`` whenever it changes. Errors reach the caller as
    exceptions (a dropped client as :class:`ClientGone`); counting them is the caller's
    business.
    """

    def __init__(
        self,
        run: RunFn,
        limits: BatchLimits,
        *,
        token_axes: Mapping[str, int] | None = None,
        retry_after_seconds: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[BatchStats, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        extra: ExtraFn | None = None,
        instances: int = 1,
    ) -> None:
        """``token_axes``: which axis of which output is the token axis (trimmed per request;
        default ``{"weights": 2}``). ``extra``, if given, runs in the worker thread right after
        the model, on its outputs and the batch's mask, for batches with a job that asked for it
        (``wants_extra``). ``instances``: how many runs may be in flight at once, each in a
        worker thread of its own (``run`` must be safe to call from several threads, as an
        ONNX Runtime session is); while one is free, the model counts as idle."""
        if instances < 1:
            raise ValueError(f"instances must be at least 1, got {instances}")
        self._run = run
        self._extra = extra
        self.limits = limits
        self.token_axes = dict(token_axes if token_axes is not None else {"weights": 2})
        self.retry_after_seconds = retry_after_seconds
        self._clock = clock
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._pending: list[Job] = []
        self._places: deque[Place] = deque()  # admitted, not yet queued; oldest first
        self._counted = 0  # of them, those that count against max_queue
        self._wake = asyncio.Event()
        self.instances = instances
        # Prepared runs go to the model's threads (onnx_0, ...) through a queue, and each thread
        # takes its next run as soon as it ends one: the model never waits for a turn of the
        # event loop between runs (under load a turn takes milliseconds).
        self._handoff = _Handoff()
        self._handed: set[_Run] = set()  # handed to the threads: waiting for one, or running
        self._threads: list[threading.Thread] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    def check(self) -> None:
        """Raise if the next request would be refused: shutting down, or the queue is full
        (queued requests and the places held by requests still being read)."""
        if self._closed:
            raise NotReady("the server is shutting down")
        if len(self._pending) + self._held() >= self.limits.max_queue:
            raise Overloaded(self.limits.max_queue, self.retry_after_seconds)

    def admit(self) -> Place:
        """:meth:`check`, then hold a place for the request while its body is read."""
        self.check()
        place = Place(self, self._clock())
        self._places.append(place)
        self._counted += 1
        return place

    def _held(self) -> int:
        """How many places count now: those older than HOLD_SECONDS stop counting."""
        horizon = self._clock() - HOLD_SECONDS
        places = self._places
        while places and (places[0].released or places[0].since <= horizon):
            self._uncount(places.popleft())
        return self._counted

    def _uncount(self, place: Place) -> None:
        if place.counting:
            place.counting = False
            self._counted -= 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._depth_changed()

    def _hand(self, run: _Run) -> None:
        """Hand ``run`` to an idle model thread, or queue it for the next one that ends a run;
        a thread is started only when none is idle and fewer than ``instances`` exist (as a
        thread pool does: a light load keeps to one thread, its caches and its malloc arena)."""
        self._handed.add(run)
        if not self._handoff.put(run) and len(self._threads) < self.instances:
            loop = asyncio.get_running_loop()
            name = f"onnx_{len(self._threads)}"
            thread = threading.Thread(target=self._work, args=(loop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    async def close(self) -> None:
        """Stop taking work and fail what is still queued or running with 503.

        The model runs in progress (in the model's threads) cannot be interrupted; their
        results are discarded, and the threads are joined off the event loop.
        """
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        stopping = NotReady("the server is shutting down")
        self._fail(self._pending, stopping)
        self._set_pending([])
        for run in self._handed:
            self._fail(run.batch, stopping)
        self._handed.clear()
        self._handoff.drain()  # runs not started yet are not started at all
        for _ in self._threads:
            self._handoff.put(None)
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join)

    def refuse_all(self, error: Exception) -> int:
        """Stop taking work and fail every queued request with ``error`` (the batch running
        now still completes); returns how many were failed. Used at the end of a graceful
        shutdown, so that queued clients get an answer instead of a reset connection."""
        self._closed = True
        jobs = self._pending
        self._set_pending([])
        self._fail(jobs, error)
        return len(jobs)

    def _set_pending(self, jobs: list[Job]) -> None:
        self._pending = jobs
        self._depth_changed()

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._pending))

    @staticmethod
    def _fail(jobs: list[Job], error: Exception) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    async def submit(
        self,
        embeddings: NDArray[np.float32],
        attention_mask: NDArray[np.bool_],
        is_disconnected: LeftFn | None = None,
        wants_extra: bool = False,
        place: Place | None = None,
    ) -> Outputs:
        """Queue one request and wait for its outputs (its rows of every output, and of the
        extra result when ``wants_extra``). With the ``place`` that :meth:`admit` gave it, it
        takes that place (checked again only if it no longer counts); without, it is checked
        now."""
        counted = place is not None and place.counting
        if place is not None:
            place.release()
        if not counted:
            self.check()
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        job = Job(embeddings, attention_mask, self._clock(), future, is_disconnected, wants_extra)
        self._pending.append(job)
        self._depth_changed()
        self._wake.set()
        return await future

    async def _loop(self) -> None:
        """Select and prepare batches (clients checked, inputs merged) and hand them to the
        model's threads: up to ``instances`` running and one more prepared, so that a thread
        that ends a run starts the next at once. While every instance is taken, only a batch
        that is already complete is prepared (:func:`select_batch`)."""
        while True:
            handed = len(self._handed)
            busy = handed >= self.instances
            batch = None
            if handed < self.instances + 1:
                batch = select_batch(self._pending, self._clock(), self.limits, idle=not busy)
            if batch is None:
                await self._wait(busy)
                continue
            chosen = set(map(id, batch))
            self._set_pending([job for job in self._pending if id(job) not in chosen])
            prepared = await self._prepare(batch)
            if prepared is None:  # every client of the batch had left
                continue
            self._hand(_Run(*prepared))

    async def _wait(self, busy: bool) -> None:
        """Until a request is queued, a run ends, or (while an instance is free) the oldest
        job's deadline."""
        self._wake.clear()
        timeout = None
        if self._pending and not busy:
            timeout = max(0.0, self._pending[0].enqueued + self.limits.max_wait - self._clock())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _prepare(
        self, batch: list[Job]
    ) -> tuple[list[Job], NDArray[np.float32], NDArray[np.bool_]] | None:
        """The batch's live jobs and their merged inputs (None if every client left). A
        failure here fails exactly this batch's requests."""
        try:
            live = await self._live(batch)
            if not live:
                return None
            embeddings, mask = merge(live)
        except asyncio.CancelledError:
            self._fail(batch, NotReady("the server is shutting down"))
            raise
        except Exception as exc:
            self._fail(batch, InferenceFailed(f"batch failed: {type(exc).__name__}: {exc}"[:300]))
            return None
        return live, embeddings, mask

    async def _live(self, batch: list[Job]) -> list[Job]:
        """Drop jobs whose caller gave up or whose client disconnected. The clients whose
        check is a coroutine are asked all at once: it may wait for one turn of the event loop
        (Starlette's does), and one after the other a batch of 64 waited 64 turns, each behind
        every other connection's work (under a 429 storm, a turn took about 10 ms)."""
        waiting = [job for job in batch if not job.future.done()]
        gone: set[int] = set()
        asked: list[tuple[Job, Awaitable[bool]]] = []
        for job in waiting:
            if job.is_disconnected is None:
                continue
            answer = job.is_disconnected()
            if isinstance(answer, bool):
                if answer:
                    gone.add(id(job))
            else:
                asked.append((job, answer))
        if asked:
            answers = await asyncio.gather(*(answer for _, answer in asked))
            gone.update(id(job) for (job, _), left in zip(asked, answers, strict=True) if left)
        live = []
        for job in waiting:
            if id(job) in gone:
                job.future.set_exception(ClientGone("the client left before its model run"))
            else:
                live.append(job)
        return live

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        """One of the model's threads: run the handed batches one after the other. A run's
        result goes to the event loop (:meth:`_finish`) only once this thread is ready for
        the next run (or has taken it), so that a request answered by that result and sent
        again at once finds this thread idle instead of starting another."""
        name_this_thread()
        done: tuple[_Run, Outputs | Exception, float, float] | None = None
        while True:
            waiter = self._handoff.ready()
            if done is not None:
                try:
                    loop.call_soon_threadsafe(self._finish, *done)
                except RuntimeError:  # the event loop is closed: nobody is waiting
                    return
                # Hold nothing of that run while waiting for the next: its inputs and outputs
                # are the event loop's now, and freed when the requests are answered.
                done = None
            try:
                run = waiter.take(self._handoff, timeout=1.0)  # raises queue.Empty
            except queue.Empty:
                if loop.is_closed():  # a batcher that was never closed
                    return
                continue
            if run is None:
                return
            started = self._clock()
            try:
                wanted = self._extra is not None and any(job.wants_extra for job in run.batch)
                result: Outputs | Exception = self._run_batch(run.embeddings, run.mask, wanted)
            except Exception as exc:  # a failed run fails this batch's requests, explicitly
                result = exc
            done = (run, result, started, self._clock() - started)
            del run, result

    def _run_batch(
        self, embeddings: NDArray[np.float32], mask: NDArray[np.bool_], wanted: bool
    ) -> Outputs:
        """In the model's thread: the model, which rows are finite, then the extra result if a
        job wants it."""
        arrays = self._run(embeddings, mask)
        extra = self._extra(arrays, mask) if wanted and self._extra is not None else None
        return Outputs(arrays, finite_rows(arrays), extra)

    def _finish(
        self, run: _Run, result: Outputs | Exception, started: float, seconds: float
    ) -> None:
        """On the event loop: a run has ended. Whatever happens, every job of the batch ends
        resolved: a failure anywhere (the run, split, metrics) fails exactly this batch."""
        if run not in self._handed:  # closed meanwhile: its jobs were failed already
            return
        self._handed.discard(run)
        self._wake.set()
        batch, mask = run.batch, run.mask
        if isinstance(result, Exception):
            error = InferenceFailed(
                f"the model run failed: {type(result).__name__}: {str(result)[:200]}",
                {"batch_items": int(mask.shape[0])},
            )
            self._fail(batch, error)
            return
        try:
            if self._on_batch:
                stats = BatchStats(
                    items=int(mask.shape[0]),
                    tokens=int(mask.size),
                    real_tokens=int(mask.sum()),
                    queue_seconds=[started - job.enqueued for job in batch],
                )
                self._on_batch(stats, seconds)
            for job, outputs in zip(batch, split(batch, result, self.token_axes), strict=True):
                if not job.future.done():
                    job.future.set_result(outputs)
        except Exception as exc:
            self._fail(batch, InferenceFailed(f"batch failed: {type(exc).__name__}: {exc}"[:300]))


class _Waiter:
    """A model thread waiting for its next run (or holding it already)."""

    __slots__ = ("event", "run")

    def __init__(self, run: _Run | None = None, ready: bool = False) -> None:
        self.event = threading.Event()
        self.run = run
        if ready:
            self.event.set()

    def take(self, handoff: _Handoff, timeout: float) -> _Run | None:
        """The run handed to this thread; queue.Empty after ``timeout`` seconds without one."""
        if not self.event.wait(timeout) and handoff.withdraw(self):
            raise queue.Empty
        self.event.wait()  # handed over just now, if the wait above timed out
        return self.run


class _Handoff:
    """Runs from the event loop to the model's threads (None: one thread stops). An idle thread
    waits on a :class:`_Waiter` of its own, and a run goes to the thread that became idle last,
    so that a light load keeps to one thread, its caches and its malloc arena."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: deque[_Run | None] = deque()  # waiting for a thread
        self._idle: list[_Waiter] = []  # threads waiting for a run, the last idle last

    def put(self, run: _Run | None) -> bool:
        """Give ``run`` to the thread that became idle last (True), or queue it (False)."""
        with self._lock:
            if not self._idle:
                self._runs.append(run)
                return False
            waiter = self._idle.pop()
        waiter.run = run
        waiter.event.set()
        return True

    def ready(self) -> _Waiter:
        """A thread is ready for a run: the first queued one, or a place among the idle."""
        with self._lock:
            if self._runs:
                return _Waiter(self._runs.popleft(), ready=True)
            waiter = _Waiter()
            self._idle.append(waiter)
            return waiter

    def withdraw(self, waiter: _Waiter) -> bool:
        """Take an idle thread's place back (False: a run was handed to it meanwhile)."""
        with self._lock:
            if waiter in self._idle:
                self._idle.remove(waiter)
                return True
            return False

    def drain(self) -> list[_Run | None]:
        """Take every run that no thread has taken yet."""
        with self._lock:
            runs = list(self._runs)
            self._runs.clear()
        return runs


@dataclass(eq=False)
class _Run:
    """A prepared batch on its way to, or in, one of the model's threads."""

    batch: list[Job]
    embeddings: NDArray[np.float32]
    mask: NDArray[np.bool_]
