"""What the connection layer (:mod:`service.connections`) hands a request's handler through its
ASGI scope, under keys of its own: the place admitted for it at its head
(:mod:`service.api.admission`), and whether its client is still connected, read without
waiting. Under another server (plain uvicorn, a test transport) neither is there, and the
handler does without: it admits the request itself and asks Starlette.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from service.core.batching import Place

PLACE = "adapool.place"  # a Place
LEFT = "adapool.left"  # a callable: True once the client has disconnected


def place_of(scope: MutableMapping[str, Any]) -> Place | None:
    """The place admitted for the request of ``scope`` at its head, if it was."""
    place = scope.get(PLACE)
    return place if isinstance(place, Place) else None


def left_of(scope: MutableMapping[str, Any]) -> Callable[[], bool] | None:
    """Whether the client of ``scope``'s request has left, as the connection knows it now
    (Starlette's ``Request.is_disconnected`` waits a turn of the event loop to find out)."""
    left = scope.get(LEFT)
    return left if callable(left) else None
