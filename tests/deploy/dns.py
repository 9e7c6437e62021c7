"""A tiny DNS server for the load balancer test: answers A queries for one name with a list of
addresses, as Docker's embedded DNS answers a scaled service's name with one record per replica."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def answer(query: bytes, name: str, addresses: list[str]) -> bytes:
    """The response to one query (RFC 1035 wire format): A records for ``name``, an empty
    answer for its other types, NXDOMAIN for any other name."""
    (ident,) = struct.unpack("!H", query[:2])
    labels, offset = [], 12
    while query[offset]:
        length = query[offset]
        labels.append(query[offset + 1 : offset + 1 + length].decode().lower())
        offset += 1 + length
    question_end = offset + 5  # the root label, then type and class
    (qtype,) = struct.unpack("!H", query[offset + 1 : offset + 3])
    known = ".".join(labels) == name
    records = addresses if known and qtype == 1 else []
    flags = 0x8180 if known else 0x8183  # response, recursion desired and available; rcode
    header = struct.pack("!HHHHHH", ident, flags, 1, len(records), 0, 0)
    body = b"".join(
        struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a) for a in records
    )
    return header + query[12:question_end] + body


@contextmanager
def dns_server(name: str, addresses: list[str]) -> Iterator[int]:
    """Serve on a free UDP port of 127.0.0.1 (yielded) until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                query, client = sock.recvfrom(512)
            except TimeoutError:
                continue
            sock.sendto(answer(query, name, addresses), client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        sock.close()
