"""Container HEALTHCHECK: exit 0 when the service's liveness endpoint answers 200 (standard library only)."""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('SEISBIND_PORT', '8000')}/healthz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as e:  # noqa: BLE001 - any failure means unhealthy
    print(f"{url}: {e}", file=sys.stderr)
    sys.exit(1)
