"""Container health check: exit 0 when the service's GET /health/ready answers 200, else 1.

Standard library only, so the runtime image needs no curl. Readiness runs a real one-token
forward pass on every model version. Sends ``Authorization: Bearer $ADAPOOL_API_KEY`` when a key
is set (needed only with ``ADAPOOL_OPEN_HEALTH_AND_METRICS=false``).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("ADAPOOL_PORT", "8000")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/health/ready")
    key = os.environ.get("ADAPOOL_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # 503 while loading, shutting down or broken
        print(f"not ready: HTTP {exc.code}: {exc.read(500).decode(errors='replace')}")
        return 1
    except OSError as exc:  # refused, timed out: the server is not up
        print(f"not ready: {exc}")
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
