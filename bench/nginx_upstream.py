"""nginx as a fake vLLM: fixed JSON answers for two models, one port each, on loopback.

nginx answers from memory with `return`, discarding request bodies of any size, so at tens of
thousands of requests per second on one core it cannot be what limits the gateway. It runs as our
own process (foreground, temporary prefix), never as the system service.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench import shapes


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise RuntimeError("nginx is not installed; run bench/setup.sh (make bench does)")
    return found


def _quoted(payload: bytes) -> str:
    text = payload.decode()
    if "$" in text or "'" in text or "\\" in text:
        raise ValueError("payload would need escaping inside an nginx string")
    return f"'{text}'"


def config(prefix: Path, ports: dict[int, str]) -> str:
    """nginx.conf serving, on each port, /health, /v1/models and a chat completion for its model."""
    servers = []
    for port, model in ports.items():
        servers.append(f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        location = /health {{ return 200 ''; }}
        location = /v1/models {{ return 200 {_quoted(shapes.model_list(model))}; }}
        location / {{ return 200 {_quoted(shapes.chat_completion(model))}; }}
    }}""")
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    default_type application/json;
    client_max_body_size 64m;
    client_body_buffer_size 1m;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server_tokens off;
{"".join(servers)}
}}
"""


def argv(prefix: Path, ports: dict[int, str]) -> list[str]:
    """Write the configuration under `prefix` and return the command that serves it."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config(prefix, ports))
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
