#!/usr/bin/env python3
"""An HTTP proxy on loopback for tests, CI and demos: Debian's ``tinyproxy`` with a
generated configuration (listens on 127.0.0.1 only, allows only 127.0.0.1 as client,
``CONNECT`` only to the usual TLS ports, no upstream proxy, every request logged), run
in the foreground (``tinyproxy -d -c CONF``).

As a script it starts the proxy, prints one JSON line (``url``, ``host``, ``log_file``)
once it accepts connections, and serves until SIGINT or SIGTERM::

    .venv/bin/python scripts/http_proxy.py [--dir DIR]
    ketch mount docker://127.0.0.1:PORT/ketch:py1 /mnt --proxy http://127.0.0.1:PROXY_PORT

As a module (``tests/fixtures/mirrors.py``), :class:`ProxyServer` is a context manager
whose ``start()`` returns a :class:`RunningProxy` once the proxy accepts connections, or
raises ``ProxyServerError`` with the tail of its log. ``RunningProxy.requests()`` reads
back from the log what went through it (``tinyproxy`` logs each request line at
``LogLevel Info``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from scripts.foreground import Started, serve_until_signal
except ModuleNotFoundError:  # run as a file: its own directory is on sys.path
    from foreground import Started, serve_until_signal  # type: ignore[import-not-found,no-redef]

PROXY_BINARY = "tinyproxy"
START_TIMEOUT = 15.0
LOG_TAIL_LINES = 30
#: the ports ``CONNECT`` may reach (HTTPS, NNTPS), as Debian's default configuration
CONNECT_PORTS = (443, 563)
# CONNECT   Nov 28 08:48:47.649 [15381]: Request (file descriptor 5): GET http://... HTTP/1.1
_REQUEST_LINE = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/[\d.]+")


class ProxyServerError(Exception):
    """The proxy could not start."""


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    method: str
    url: str  # absolute, as the client sent it to the proxy


@dataclass(frozen=True, slots=True)
class RunningProxy:
    host: str  # 127.0.0.1:PORT
    url: str  # http://127.0.0.1:PORT, as --proxy takes it
    log_file: Path

    def requests(self) -> list[ProxiedRequest]:
        """Every request the proxy has logged so far, in order."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [ProxiedRequest(m[1], m[2]) for m in _REQUEST_LINE.finditer(text)]

    def to_json(self) -> dict[str, str]:
        return {"host": self.host, "url": self.url, "log_file": str(self.log_file)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ProxyServer(Started[RunningProxy]):
    """``tinyproxy -d`` on a free loopback port."""

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="ketch-proxy-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.running: RunningProxy | None = None

    @property
    def log_file(self) -> Path:
        return self.root / "tinyproxy.log"

    @property
    def output_file(self) -> Path:
        """Where the process's own stdout and stderr go (errors before the log opens)."""
        return self.root / "tinyproxy.out"

    def start(self, timeout: float = START_TIMEOUT) -> RunningProxy:
        binary = shutil.which(PROXY_BINARY)
        if binary is None:
            raise ProxyServerError(
                f"{PROXY_BINARY}: expected on PATH, not found; "
                "run scripts/install-system-deps.sh (Debian package tinyproxy)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        last_error = "not started"
        for _ in range(3):  # a port found free may be taken before tinyproxy binds it
            port = free_port()
            config = self._write_config(port)
            try:
                self._launch(binary, config, port, timeout)
            except ProxyServerError as exc:
                last_error = str(exc)
                self._terminate()
                if "in use" in last_error.lower():
                    continue
                self.stop()
                raise
            host = f"127.0.0.1:{port}"
            self.running = RunningProxy(host, f"http://{host}", self.log_file)
            return self.running
        self.stop()
        raise ProxyServerError(last_error)

    def _write_config(self, port: int) -> Path:
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 120",
            "MaxClients 200",
            "Allow 127.0.0.1",
            *(f"ConnectPort {p}" for p in CONNECT_PORTS),
            f'LogFile "{self.log_file}"',
            "LogLevel Info",
            "DisableViaHeader Yes",
        ]
        path = self.root / "tinyproxy.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _launch(self, binary: str, config: Path, port: int, timeout: float) -> None:
        with self.output_file.open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "-d", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProxyServerError(
                    f"{PROXY_BINARY} exited with {self.process.returncode} before accepting "
                    f"connections; last lines of its log:\n{self._log_tail()}"
                )
            if _accepts(port):
                return
            time.sleep(0.05)
        raise ProxyServerError(
            f"{PROXY_BINARY} did not accept connections on 127.0.0.1:{port} within "
            f"{timeout:.0f}s; last lines of its log:\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        lines: list[str] = []
        for path in (self.output_file, self.log_file):
            with contextlib.suppress(FileNotFoundError):
                lines += path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(no log)"

    def _terminate(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        self._terminate()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, help="configuration and log (default: temporary)")
    args = parser.parse_args(argv)
    server = ProxyServer(args.dir)
    try:
        running = server.start()
    except ProxyServerError as exc:
        print(f"http_proxy: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(running.to_json()), flush=True)
    return serve_until_signal(
        lambda: server.process is not None and server.process.poll() is None,
        server.stop,
        "http_proxy",
    )


if __name__ == "__main__":
    sys.exit(main())
