"""Docker HEALTHCHECK for the gateway images: `healthcheck.py [PATH]` exits 0 when the gateway in
this container answers GET PATH (default /health) with 200, and 1 otherwise.

It finds the port the way the server does: the configuration file (GATEWAY_CONFIG, else the file
the entrypoint would pick up at /etc/vllm-gateway/gateway.yaml) with GATEWAY_* variables on top.
A port given only as a `serve --port` argument is not visible here: set GATEWAY_PORT instead.
Standard library plus the gateway's own settings module; no curl in the slim image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from vllm_gateway.settings import ConfigError, load_settings

DEFAULT_CONFIG = os.environ.get("DEFAULT_GATEWAY_CONFIG", "/etc/vllm-gateway/gateway.yaml")


def target(path: str) -> str:
    config = os.environ.get("GATEWAY_CONFIG") or (DEFAULT_CONFIG if os.path.isfile(DEFAULT_CONFIG) else None)
    settings = load_settings(config)
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}{path}"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/health"
    try:
        url = target(path)
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    try:
        # No proxy: HTTP(S)_PROXY in the container must not send a loopback probe elsewhere.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=4) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: GET {url} failed: {exc}", file=sys.stderr)
        return 1
    print(f"healthcheck: GET {url} -> {'ok' if ok else 'not ok'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
