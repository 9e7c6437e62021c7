"""The process's uvicorn server: the garbage collector frozen once the models are loaded, and a
graceful shutdown with a drain before it stops listening.

Once started, everything built so far (the imported libraries, the sessions) lives as long as
the process: it is moved out of the collector's view (``gc.freeze()``), so that a full
collection under load walks only the objects of requests (the longest pause while 3,000
requests ran went from 50 to 4 ms: ``gc_max_pause_ms`` of ``python -m bench.inproc``, which
freezes the same way; every request in flight waits out a pause). Freezing is process-wide,
which is why it belongs to the process and not to the app.

On the first SIGTERM (or SIGINT) readiness turns 503 at once while requests are still served for
``shutdown_drain_seconds``, so that a load balancer polling ``/health/ready`` stops sending new
ones. Then uvicorn's own graceful shutdown runs: the listener closes, idle connections close,
and in-flight requests get ``shutdown_timeout_seconds`` to finish. Requests still queued at that
point get 503 ``not_ready`` (an answer, not a reset connection) and the process exits. A second
signal skips the rest of the drain; a third SIGINT forces the exit (uvicorn's behaviour).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from types import FrameType

import uvicorn

from service.core.runtime import Runtime
from service.errors import NotReady

log = logging.getLogger("adapool.service")
# Extra time uvicorn gives the requests failed with 503 to write their answers.
ANSWER_SECONDS = 1.0


class GracefulServer(uvicorn.Server):
    """A uvicorn server for one app whose core is ``runtime``."""

    def __init__(
        self, config: uvicorn.Config, runtime: Runtime, drain: float, timeout: float
    ) -> None:
        config.timeout_graceful_shutdown = int(timeout + ANSWER_SECONDS + 0.999)
        super().__init__(config)
        self.runtime = runtime
        self.drain = drain
        self.timeout = timeout
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: the first signal starts the drain, later ones are uvicorn's."""
        if self._drain_until is None and not self.should_exit:
            self._captured_signals.append(sig)  # re-raised after shutdown, as uvicorn does
            self.runtime.shutting_down = True  # readiness answers 503 from now on
            self._drain_until = time.monotonic() + self.drain
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        """Called every 0.1 s by uvicorn's main loop; ends the drain when it is over."""
        if self._drain_until is not None and not self.should_exit:
            if self.drain and counter % 10 == 0:
                left = max(0.0, self._drain_until - time.monotonic())
                log.info("draining: readiness is 503, closing the listener in %.1f s", left)
            if time.monotonic() >= self._drain_until:
                self.should_exit = True
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start (the app's lifespan loads the models), then freeze what it built."""
        await super().startup(sockets)
        if self.started:
            gc.collect()
            gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.runtime.shutting_down = True
        log.info("shutting down: in-flight requests have %.1f s", self.timeout)
        timer = asyncio.get_running_loop().call_later(self.timeout, self._refuse_queued)
        try:
            await super().shutdown(sockets)
        finally:
            timer.cancel()

    def _refuse_queued(self) -> None:
        refused = self.runtime.refuse_queued(NotReady("the server is shutting down"))
        if refused:
            log.warning("shutdown timeout: %d queued request(s) answered 503", refused)
