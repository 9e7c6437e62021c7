"""The connection layer's parts on their own: the gate's admission, replacement and reserve,
the refusal's bytes, the descriptor limit, and the settings' checks. The protocol itself runs
against the real server in tests/reliability/test_connections.py."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from service.api.errors import error_body
from service.connections import (
    OTHER_DESCRIPTORS,
    ConnectionGate,
    GuardedProtocol,
    Limits,
    fit_descriptors,
    refusal,
)
from service.errors import HeadersTooLarge, TooManyConnections
from service.metrics import Metrics
from service.settings import Settings


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Connection:
    """What the gate touches of a GuardedProtocol."""

    def __init__(self) -> None:
        self.admitted = False
        self.transport = Transport()


def gate(max_connections: int = 4, reserved: int = 1) -> ConnectionGate:
    metrics = Metrics(CollectorRegistry())
    return ConnectionGate(Limits.from_settings(Settings()), max_connections, reserved, metrics)


def value(g: ConnectionGate, name: str, **labels: str) -> float | None:
    return g.metrics.registry.get_sample_value(name, labels)


def admit(g: ConnectionGate, connection: Connection) -> bool | None:
    return g.admit(cast(GuardedProtocol, connection))


def test_the_gate_admits_up_to_the_general_share_then_replaces_the_oldest_waiting() -> None:
    g = gate()
    first, second, third = Connection(), Connection(), Connection()
    assert [admit(g, c) for c in (first, second, third)] == [False, False, False]
    g.busy(cast(GuardedProtocol, first))  # a request in progress: never replaced
    newcomer = Connection()
    assert admit(g, newcomer) is False
    assert (first.transport.closed, second.transport.closed) == (False, True)
    assert (g.open, second.admitted) == (3, False)
    assert value(g, "adapool_refused_connections_total", reason="replaced") == 1
    assert value(g, "adapool_connections") == 3
    g.idle(cast(GuardedProtocol, first))  # answered: waiting again, now the newest
    assert admit(g, Connection()) is False
    assert third.transport.closed and not first.transport.closed


def test_with_none_waiting_the_reserve_then_a_refusal() -> None:
    g = gate(max_connections=3, reserved=1)
    held = [Connection(), Connection()]
    for c in held:
        assert admit(g, c) is False
        g.busy(cast(GuardedProtocol, c))
    reserve = Connection()
    assert admit(g, reserve) is True  # served for health and metrics only
    g.busy(cast(GuardedProtocol, reserve))
    assert admit(g, Connection()) is None
    assert g.open == 3
    g.leave(cast(GuardedProtocol, held[0]))
    g.leave(cast(GuardedProtocol, held[0]))  # counted out once
    assert g.open == 2 and value(g, "adapool_connections") == 2
    assert admit(g, Connection()) is True


def parse(answer: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert int(headers["content-length"]) == len(body)
    return status, headers, json.loads(body)


def test_a_refusal_is_the_json_error_with_a_request_id_and_close() -> None:
    error = HeadersTooLarge("too large", {"limit": 10})
    status, headers, body = parse(refusal(error, [(b"server", b"uvicorn")]))
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["connection"] == "close" and headers["server"] == "uvicorn"
    assert headers["content-type"] == "application/json"
    rid = headers["x-request-id"]
    assert body == json.loads(error_body(error, rid))
    assert body["error"] == {
        "type": "headers_too_large",
        "message": "too large",
        "detail": {"limit": 10},
    }
    _, other, _ = parse(refusal(TooManyConnections("full"), []))
    assert other["x-request-id"] != rid


def test_the_descriptor_limit_is_raised_to_fit_or_the_cap_lowered() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fit_descriptors(100, 100, 32) == (100, 100)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit to run into")
    fits, backlog = fit_descriptors(hard * 2, 2048, 32)
    share = (hard - OTHER_DESCRIPTORS) // 3
    assert (fits, backlog) == (share, min(2048, share))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard  # raised as far as it goes
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_container_limit_of_1024_still_serves_hundreds_of_connections() -> None:
    """podman's default (1,024, soft and hard) once capped the server at 1 connection. In a
    child process: a lowered hard limit cannot be raised again without privileges."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
        "from service.connections import fit_descriptors; "
        "print(fit_descriptors(4096, 2048, 32))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(256, 256)"


def test_settings_keep_part_of_the_cap_for_everything_else() -> None:
    with pytest.raises(ValidationError, match="reserved_connections"):
        Settings(max_connections=8, reserved_connections=8)
    limits = Limits.from_settings(Settings())
    assert (limits.max_requests, limits.max_age) == (0, 0.0)  # lifetime caps off by default
    assert limits.header_timeout <= 30
