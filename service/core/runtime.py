"""The serving core: models, readiness, admission, batching and per-item results.

:class:`Runtime` owns the model lifecycle (scan, load, warm-up, readiness and the model gauges)
and serves pool requests through :meth:`Runtime.pool` without ever seeing an HTTP request: a
front-end hands it a :class:`~service.core.calls.Caller`. It is the one place where

- a request is admitted (:meth:`pool`: loaded, known, ready, then the batcher's queue; a
  front-end may admit it earlier, from its path and headers alone, :meth:`hold`);
- a refused request is counted, by the error's type (:meth:`_rejected`, through
  ``service.errors.REJECTION_REASONS``);
- readiness is decided (:meth:`problems`, :meth:`readiness`) and published
  (``adapool_model_ready``, :meth:`_publish`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from service.core.backend import OnnxBackend
from service.core.batching import Arrays, Batcher, BatchLimits, BatchStats, Place
from service.core.calls import Batch, Caller, PoolResult, Work
from service.core.diagnostics import ItemDiagnostics, Summary, describe, summarise
from service.core.models import ServedVersion, scan
from service.core.policy import BatchPolicy, measured, probe
from service.errors import (
    ClientGone,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    Unauthorized,
    invalid,
    rejection_reason,
)
from service.metrics import Metrics, ModelMetrics
from service.settings import Settings

log = logging.getLogger("adapool.service")
PROBE_TOKENS = 128  # the token length the batch policy is measured at


class Backend(Protocol):
    """What the core needs of a backend (:class:`OnnxBackend`; tests pass fakes)."""

    provider: str
    providers: list[str]
    input_dim: int
    outputs: list[str]

    @property
    def problem(self) -> str | None: ...

    def run(self, embeddings: NDArray[np.float32], attention_mask: NDArray[np.bool_]) -> Arrays: ...

    def warm_up(self) -> None: ...


BackendFactory = Callable[[Path, Settings], Backend]


def cores() -> int:
    """The cores this process may run on (its CPU affinity: what a container's cpuset or
    ``taskset`` leaves it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_run(instances: int, intra_op_threads: int) -> int:
    """ONNX Runtime's intra-op threads for one run: a version's threads (``intra_op_threads``,
    else the process's cores) divided among its ``instances``, at least one each. A single
    instance keeps the setting as it is (0: ONNX Runtime's own default, every core)."""
    if instances == 1:
        return intra_op_threads
    return max(1, (intra_op_threads or cores()) // instances)


def onnx_backend(model_file: Path, settings: Settings) -> Backend:
    return OnnxBackend(
        model_file,
        settings.device,
        threads_per_run(settings.model_instances, settings.intra_op_threads),
        settings.thread_spinning,
    )


class Runtime:
    """Every served model version, and the one call that serves a pool request."""

    def __init__(
        self, settings: Settings, metrics: Metrics, backend: BackendFactory = onnx_backend
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._backend = backend
        self.models: dict[str, dict[int, ServedVersion]] = {}
        self.loaded = False
        self.shutting_down = False
        self.started = time.time()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Scan the repository, load and warm up every version, start their batchers."""
        s = self.settings
        self.models = scan(s.model_repository, s.models)
        if s.default_model not in self.models:
            raise RuntimeError(
                f"default model {s.default_model!r} not in {s.model_repository} "
                f"(found: {', '.join(self.models) or 'none'})"
            )
        await asyncio.to_thread(self._load_all)
        for served in self.versions():
            if served.backend is not None and served.error is None:
                served.batcher = self._batcher(served)
                served.batcher.start()
            self._publish(served)
        self.loaded = True

    async def stop(self) -> None:
        """Refuse new work and close every batcher (queued requests get 503)."""
        self.shutting_down = True
        for served in self.versions():
            if served.batcher is not None:
                await served.batcher.close()

    def refuse_queued(self, error: ServiceError) -> int:
        """Fail every queued request with ``error`` (the runs in progress finish)."""
        return sum(s.batcher.refuse_all(error) for s in self.versions() if s.batcher)

    def versions(self) -> Iterator[ServedVersion]:
        """Every version, by model name then version."""
        for versions in self.models.values():
            yield from versions.values()

    def resolve(self, name: str, version: int | None) -> ServedVersion:
        """``name``'s ``version``; without one, the newest that is ready, else the newest."""
        versions = self.models.get(name)
        if not versions:
            raise NotFound(
                f"model {name!r} is not served", {"model": name, "models": sorted(self.models)}
            )
        if version is None:
            ready = [v for v, served in versions.items() if served.ready]
            return versions[max(ready or versions)]
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {version}",
                {"model": name, "versions": sorted(versions)},
            )
        return versions[version]

    def problems(self) -> list[str]:
        """Why the service is not ready (empty when it is)."""
        if self.shutting_down:
            return ["shutting down"]
        if not self.loaded:
            return ["models are loading"]
        return [f"{s.label}: {s.problem}" for s in self.versions() if s.problem]

    async def readiness(self) -> list[str]:
        """:meth:`problems`, and when there are none, a real forward pass on every version."""
        return self.problems() or await asyncio.to_thread(self._forward_checks)

    def _load_all(self) -> None:
        """Open a session per version and warm it up (in a worker thread)."""
        for served in self.versions():
            if served.error is not None:  # found broken by the repository scan
                log.error("model %s cannot load: %s", served.label, served.error)
                continue
            try:
                backend = self._backend(served.path / "model.onnx", self.settings)
                _check_graph(backend, served)
                backend.warm_up()
            except Exception as exc:  # a broken model is reported by readiness, not fatal
                served.error = f"{served.path / 'model.onnx'}: {type(exc).__name__}: {exc}"[:400]
                log.error("model %s failed to load: %s", served.label, served.error)
                continue
            served.backend = backend
            served.policy = self._policy(served)
            info = self.metrics.model_info.labels(
                served.name, str(served.version), backend.provider
            )
            info.set(1)
            log.info(
                "loaded %s on %s; batch policy: %s, %s padded tokens per run",
                served.label,
                backend.provider,
                served.policy.source,
                served.policy.preferred_tokens or "up to the caps",
            )

    def _policy(self, served: ServedVersion) -> BatchPolicy:
        """The version's run size: pinned by settings, else by its manifest, else measured."""
        s = self.settings
        assert served.backend is not None and served.manifest is not None
        if s.preferred_batch_tokens is not None:
            return BatchPolicy("settings", s.preferred_batch_tokens)
        if served.manifest.preferred_batch_tokens is not None:
            return BatchPolicy("manifest", served.manifest.preferred_batch_tokens)
        if s.batch_policy == "off":
            return BatchPolicy("off", None)
        tokens = min(PROBE_TOKENS, s.max_tokens_per_item)
        rounds = probe(
            served.backend.run,
            served.manifest.input_dim,
            s.max_batch_size,
            s.max_batch_tokens,
            tokens,
            s.batch_probe_seconds,
            instances=s.model_instances,
        )
        return measured(rounds, tokens, s.model_instances)

    def _batcher(self, served: ServedVersion) -> Batcher:
        assert served.backend is not None and served.manifest is not None
        s, m = self.settings, self.metrics.model(served.name)
        rule = served.manifest.signal_rule
        preferred = served.policy.preferred_tokens if served.policy else None
        limits = BatchLimits(
            s.max_batch_size,
            s.max_batch_tokens,
            s.max_wait_ms / 1000.0,
            s.max_queue_requests,
            preferred,
        )
        m.preferred_tokens.set(preferred or 0)

        def on_batch(stats: BatchStats, seconds: float) -> None:
            m.batch_size.observe(stats.items)
            m.batch_tokens.observe(stats.tokens)
            m.padding_ratio.observe(1.0 - stats.real_tokens / stats.tokens)
            m.inference.observe(seconds)
            for wait in stats.queue_seconds:
                m.queue.observe(wait)

        def diagnostics(outputs: Arrays, mask: Any) -> Summary:
            # The diagnostics arrays of a whole run, in the model's worker thread right after
            # the run (one vectorised pass per run, not one per request on the event loop).
            return summarise(outputs["weights"], mask, rule)

        token_axes = {
            t.name: t.shape.index("tokens") for t in served.manifest.outputs if "tokens" in t.shape
        }
        return Batcher(
            served.backend.run,
            limits,
            token_axes=token_axes,
            retry_after_seconds=s.retry_after_seconds,
            on_batch=on_batch,
            on_depth=m.queue_depth.set,
            extra=diagnostics,
            instances=s.model_instances,
        )

    def _forward_checks(self) -> list[str]:
        """Readiness runs a real one-token forward pass on every version (worker thread)."""
        problems = []
        for served in self.versions():
            assert served.backend is not None
            try:
                served.backend.warm_up()
            except Exception as exc:  # reported by name, so the failing model is known
                problems.append(f"{served.label}: forward pass failed: {exc}")
                self._publish(served, forward_ok=False)
            else:
                self._publish(served)
        return problems

    def _publish(self, served: ServedVersion, forward_ok: bool = True) -> None:
        """The one place ``adapool_model_ready`` is set."""
        ready = forward_ok and served.ready
        self.metrics.model_ready.labels(served.name, str(served.version)).set(int(ready))

    # -- requests ----------------------------------------------------------------------------

    def authorized(self, authorization: str | None) -> bool:
        """Whether ``Authorization`` is ``Bearer <api_key>``, compared in constant time (no
        key: every request is)."""
        key = self.settings.api_key
        if key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        expected = key.get_secret_value().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected)

    def authorize(self, authorization: str | None) -> None:
        """Refuse (401, counted) a request that is not :meth:`authorized`."""
        if not self.authorized(authorization):
            error = Unauthorized()
            self._rejected("", error)
            raise error

    def hold(self, model: str, version: int | None) -> Place | Overloaded | None:
        """Admit a pool request for ``model`` (``version``) before anything but its path and
        headers is read: a :class:`Place` in its version's queue, or the refusal it gets now
        because that queue is full (counted as :meth:`pool` counts it); None when the request
        is for no ready version (:meth:`pool` answers it, with the error it deserves).

        A front-end that can ask this early (the HTTP connection layer) hands the place to
        :meth:`pool` through its caller, so that under overload a refusal costs next to nothing
        and no request is admitted twice."""
        if not self.loaded:
            return None
        try:
            served = self.resolve(model, version)
        except NotFound:
            return None
        if served.problem is not None or served.batcher is None:
            return None
        try:
            return served.batcher.admit()
        except Overloaded as error:
            self._rejected(served.name, error)
            return error
        except ServiceError:
            return None

    async def pool(self, model: str, version: int | None, caller: Caller) -> PoolResult:
        """Serve one pool request: resolve, admit, read, check, batch, check, diagnose."""
        served: ServedVersion | None = None
        try:
            if not self.loaded:  # the name is not known to be served yet: no model label
                raise NotReady("models are loading")
            served = self.resolve(model, version)
            caller.on_model(served)
            if served.problem is not None or served.batcher is None:
                raise NotReady(f"model {served.label} is not ready: {served.problem}")
            # Before the body is read (under overload, reading is the cost); the place is held
            # while it is, and released if the request fails before it is queued.
            with self._place(served, caller.place) as place:
                m = self.metrics.model(served.name)
                started = time.perf_counter()
                work = await caller.read(served)
                self._check(served, work.batch)
                m.decode.observe(time.perf_counter() - started)
                out = await served.batcher.submit(
                    work.batch.embeddings,
                    work.batch.attention_mask,
                    caller.is_disconnected,
                    wants_extra=work.diagnostics,
                    place=place,
                )
            bad = [i for i, ok in enumerate(out.finite.tolist()) if not ok]
            if bad:
                raise invalid(
                    "embeddings",
                    "the model's outputs for this item are not finite: its values are too "
                    "large for the model (the README gives each model's safe input range)",
                    item=bad[0],
                    items=bad,
                )
            summary = out.extra if isinstance(out.extra, Summary) else None
            diagnostics = None
            if work.diagnostics:
                assert summary is not None, "asked for with wants_extra"
                diagnostics = self._diagnose(summary, work, m)
            return PoolResult(served, work.batch, out.arrays, summary, diagnostics, m)
        except ServiceError as error:
            self._rejected(served.name if served else "", error)
            raise
        except asyncio.CancelledError:  # the caller's task was cancelled: its client is gone
            self._rejected(served.name if served else "", ClientGone())
            raise

    @staticmethod
    def _place(served: ServedVersion, given: Place | None) -> Place:
        """The request's place in ``served``'s queue: the one :meth:`hold` gave it if that is
        for this version, else one admitted now."""
        assert served.batcher is not None
        if given is not None:
            if given.batcher is served.batcher and not given.released:
                return given
            given.release()
        return served.batcher.admit()

    def _rejected(self, model: str, error: ServiceError) -> None:
        """The one place a refused request is counted (``adapool_rejected_requests_total``)."""
        reason = rejection_reason(error)
        if reason is not None:
            self.metrics.reject(model, reason)

    def _check(self, served: ServedVersion, batch: Batch) -> None:
        """What the graph does not check: the token dim, and that query tokens are real."""
        assert served.manifest is not None
        manifest = served.manifest
        dim = batch.embeddings.shape[2]
        if dim != manifest.input_dim:
            raise invalid(
                "embeddings",
                f"token dim {dim} does not match the model's input dim {manifest.input_dim}",
            )
        needed = list(manifest.pooling.required_tokens)
        if not needed:
            return
        mask = batch.attention_mask
        real = batch.lengths > max(needed)  # then the positions exist; are they real tokens?
        if real.any():
            real[real] = mask[real][:, needed].all(axis=1)
        if not real.all():
            raise invalid(
                "embeddings",
                f"this model's query token(s) {needed} must be real tokens of every item",
                item=int(np.flatnonzero(~real)[0]),
            )

    @staticmethod
    def _diagnose(summary: Summary, work: Work, m: ModelMetrics) -> list[ItemDiagnostics] | None:
        """The diagnostics' histograms, and the per-item records if the front-end wants them."""
        started = time.perf_counter()
        for n, normalized, entropy, snr in zip(
            summary.n.tolist(),
            summary.normalized.tolist(),
            summary.entropy.tolist(),
            summary.snr.tolist(),
            strict=True,
        ):
            if n > 1:
                m.entropy.observe(normalized)
            m.effective_tokens.observe(math.exp(entropy))
            m.estimated_snr.observe(snr)
        records = describe(summary, work.top_k) if work.records else None
        m.diagnostics.observe(time.perf_counter() - started)
        return records


def _check_graph(backend: Backend, served: ServedVersion) -> None:
    """The session's signature must be the manifest's."""
    assert served.manifest is not None
    manifest = served.manifest
    if backend.input_dim != manifest.input_dim:
        raise ValueError(
            f"the graph takes {backend.input_dim}-dim tokens, the manifest says "
            f"{manifest.input_dim}"
        )
    missing = sorted(set(manifest.output_names) - set(backend.outputs))
    if missing:
        raise ValueError(f"the graph has no output(s) {missing} that the manifest lists")
