"""The image's HEALTHCHECK: GET /healthz (or the path given) of this container's process, with
urllib: the image has no curl.

    python /app/deploy/healthcheck.py [/readyz]

A worker (VIDSERVE_WORKER_PORT set) answers on its health port, a gateway on VIDSERVE_PORT (over
HTTPS when VIDSERVE_TLS_CERT_FILE is set: the certificate is not checked, the probe stays on
127.0.0.1). Exit status 0 healthy, 1 not.
"""

import os
import ssl
import sys
import urllib.request

path = sys.argv[1] if len(sys.argv) > 1 else "/healthz"
worker_port = os.environ.get("VIDSERVE_WORKER_PORT")
port = worker_port or os.environ.get("VIDSERVE_PORT", "8000")
tls = not worker_port and bool(os.environ.get("VIDSERVE_TLS_CERT_FILE"))
context = ssl._create_unverified_context() if tls else None  # noqa: S323 - a local probe
try:
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
    with urllib.request.urlopen(url, timeout=4, context=context) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as e:  # refused, timed out, or an HTTP error status (HTTPError is an OSError)
    print(f"unhealthy: {path} on port {port}: {e}", file=sys.stderr)
    sys.exit(1)
