"""docker/healthcheck.py, the images' HEALTHCHECK, against a real server and a closed port."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse

from tests.deploy import tools
from tests.service.server import free_port

SCRIPT = tools.ROOT / "docker" / "healthcheck.py"


def check(port: int | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPOOL_")}
    return subprocess.run(
        [sys.executable, "-I", SCRIPT],  # -I: the standard library only, as in the image
        env={**env, "ADAPOOL_PORT": str(port)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ready_server_is_healthy(server: str) -> None:
    result = check(urlparse(server).port)
    assert result.returncode == 0, result.stdout


def test_nothing_listening_is_unhealthy() -> None:
    result = check(free_port())
    assert result.returncode == 1
    assert result.stdout.startswith("not ready:")


class NotReady(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "not_ready", "problems": ["models are loading"]}'
        self.send_response(503 if self.path == "/health/ready" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_503_is_unhealthy_and_says_why() -> None:
    server = HTTPServer(("127.0.0.1", 0), NotReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = check(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    assert "HTTP 503" in result.stdout and "models are loading" in result.stdout
