"""``python -m bench.plain_server``: the service on uvicorn's own httptools protocol, without
the connection limits of ``service.connections``: the baseline ``bench.hostile`` measures their
cost against. Same settings and flags as ``python -m service``; the limits' settings do nothing.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from service.__main__ import main
from service.settings import Settings


def plain_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration as the service had it before the limits."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
    )


if __name__ == "__main__":
    raise SystemExit(main(configure=plain_config))
