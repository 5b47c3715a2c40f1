"""The control API: HTTP/JSON on a unix socket, served from a thread.

GET /api/v1/daemon   state, version, mounts
GET /api/v1/files    files read so far, first-access order, bytes read (paths resolved
                     at the request, not at each read: ``access_trace``)
GET /metrics         Prometheus text
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from ketch.daemon.unix_path import unix_address

Route = Callable[[], tuple[str, bytes]]  # -> (content type, body)


def json_route(produce: Callable[[], Any]) -> Route:
    return lambda: ("application/json", json.dumps(produce(), indent=2).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    routes: dict[str, Route]

    def server_bind(self) -> None:
        with unix_address(Path(self.server_address)) as short:  # type: ignore[arg-type]
            self.socket.bind(short)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            body = json.dumps({"error": f"no such endpoint {self.path}"}).encode()
            self._reply(404, "application/json", body)
            return
        content_type, body = route()
        self._reply(200, content_type, body)

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"  # a unix socket peer has no host

    def log_message(self, format: str, *args: Any) -> None:
        return None


class ApiServer:
    def __init__(self, path: Path, routes: dict[str, Route]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = _Server(str(path), _Handler)
        self._server.routes = routes
        os.chmod(path, 0o600)
        # A short poll: stopping waits for it, and `ketch umount` waits for the stop.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="api",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def api_get(sock: Path, path: str, timeout: float = 5.0) -> bytes:
    """A GET on a daemon's socket; the body (raises OSError if the daemon is gone)."""

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            with unix_address(sock) as short:
                self.sock.connect(short)

    conn = _Conn("localhost", timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"{sock}{path}: HTTP {response.status}")
        return body
    finally:
        conn.close()
