"""The image's HEALTHCHECK: GET /healthz (or the path given) of this container's process, with
urllib: the image has no curl.

    python /app/deploy/healthcheck.py [/readyz]

A worker (VIDSERVE_WORKER_PORT set) answers on its health port, a gateway on VIDSERVE_PORT.
Exit status 0 healthy, 1 not.
"""

import os
import sys
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
port = os.environ.get("VIDSERVE_WORKER_PORT") or os.environ.get("VIDSERVE_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as e:  # refused, timed out, or an HTTP error status (HTTPError is an OSError)
    print(f"unhealthy: {path} on port {port}: {e}", file=sys.stderr)
    sys.exit(1)
