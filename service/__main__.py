"""``python -m service``: run the service with uvicorn.

Settings come from ``ADAPOOL_*`` environment variables; every setting also has a flag
(``--max-batch-size 32``), which wins over the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import SettingsError
from uvicorn.config import STARTUP_FAILURE

from service.app import create_app
from service.connections import ConnectionGate, GuardedConfig, Limits, fit_descriptors
from service.server import GracefulServer
from service.settings import Settings


def parse_args(argv: Sequence[str] | None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n\n")[0])
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        # argparse formats help with %: a literal one ("within 5%") must be doubled
        description = (info.description or "").replace("%", "%%")
        help_text = f"{description} (env ADAPOOL_{name.upper()})"
        if name == "models":
            parser.add_argument(flag, help=help_text + "; comma-separated")
        else:
            parser.add_argument(flag, help=help_text)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if "models" in given:
        given["models"] = [m for m in given["models"].split(",") if m]
    return given


def guarded_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration: every connection through the limits of service.connections."""
    # 2048 is uvicorn's default backlog; the kernel caps it at net.core.somaxconn.
    max_connections, backlog = fit_descriptors(
        settings.max_connections, 2048, settings.reserved_connections
    )
    limits = Limits.from_settings(settings)
    metrics = app.state.runtime.metrics
    gate = ConnectionGate(
        limits,
        max_connections,
        settings.reserved_connections,
        metrics,
        admission=app.state.head_admission,
    )
    return GuardedConfig(
        app,
        gate,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_seconds,
        backlog=backlog,
    )


def main(
    argv: Sequence[str] | None = None,
    configure: Callable[[FastAPI, Settings], uvicorn.Config] = guarded_config,
) -> int:
    """Run the server; ``configure`` gives uvicorn's configuration (bench.plain_server's
    differs)."""
    try:
        settings = Settings(**parse_args(argv))
    except (ValidationError, SettingsError) as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("adapool.service").info(
        "settings: %s", json.dumps(settings.model_dump(mode="json", exclude={"api_key"}))
    )
    app = create_app(settings)
    config = configure(app, settings)
    server = GracefulServer(
        config,
        app.state.runtime,
        drain=settings.shutdown_drain_seconds,
        timeout=settings.shutdown_timeout_seconds,
    )
    with contextlib.suppress(KeyboardInterrupt):  # SIGINT, re-raised after a graceful shutdown
        server.run()
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
