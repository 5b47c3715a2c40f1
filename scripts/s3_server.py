#!/usr/bin/env python3
"""A local S3-compatible server for tests and demos: moto's standalone server on loopback.

As a script, it starts the server, prints its endpoint URL on one line and serves until
SIGINT or SIGTERM::

    .venv/bin/python scripts/s3_server.py [--port N]
    AWS_ENDPOINT_URL=http://127.0.0.1:N AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x \\
        ketch convert oci:DIR:TAG s3://bucket/images:TAG

As a module (``tests/fixtures/s3.py``), :class:`S3Server` is a context manager whose
``start()`` returns the endpoint once the server answers, or raises ``S3ServerError``
with the tail of the server's log. moto comes from the ``dev`` extra (``moto[server]``);
it keeps everything in memory (large objects spill to temporary files) and forgets it
when stopped. Any access key and secret are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    from scripts.foreground import Started, serve_until_signal
except ModuleNotFoundError:  # run as a file: its own directory is on sys.path
    from foreground import Started, serve_until_signal  # type: ignore[import-not-found,no-redef]

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 20


class S3ServerError(RuntimeError):
    """The server could not be started."""


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class S3Server(Started[str]):
    """moto's standalone server as a child process, on ``host`` and a free port
    (``with S3Server() as endpoint``)."""

    def __init__(self, host: str = HOST, port: int | None = None) -> None:
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise S3ServerError("the S3 server has not been started")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the server and return its endpoint URL once it answers HTTP."""
        attempts = 1 if self.port is not None else 3  # a free port may be taken meanwhile
        for attempt in range(attempts):
            port = self.port if self.port is not None else free_port(self.host)
            try:
                self._spawn(port)
                self._wait_ready(timeout)
            except S3ServerError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                continue
            self.port = port
            return self.endpoint
        raise S3ServerError("unreachable")  # pragma: no cover

    def _spawn(self, port: int) -> None:
        fd, log = tempfile.mkstemp(prefix="ketch-s3-server-", suffix=".log")
        self._log = Path(log)
        self.port = port
        with os.fdopen(fd, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise S3ServerError(
                    f"moto server on {self.endpoint} exited with {code} before answering; "
                    f"its log:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2) as reply:  # noqa: S310 (our own loopback URL)
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise S3ServerError(
            f"moto server on {self.endpoint}: expected an answer within {timeout:.0f}s, "
            f"found none; its log:\n{self.log_tail()}"
        )

    def log_tail(self) -> str:
        if self._log is None or not self._log.exists():
            return "(no log)"
        lines = self._log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"

    def stop(self) -> None:
        """Stop the server (terminate, then kill) and remove its log."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST})")
    parser.add_argument("--port", type=int, help="port (default: a free one)")
    args = parser.parse_args(argv)
    server = S3Server(args.host, args.port)
    try:
        endpoint = server.start()
    except S3ServerError as exc:
        print(f"s3_server: error: {exc}", file=sys.stderr)
        return 1
    print(endpoint, flush=True)
    return serve_until_signal(
        lambda: server.process is not None and server.process.poll() is None,
        server.stop,
        "s3_server",
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
