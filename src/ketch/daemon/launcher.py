"""Start a mount daemon detached from the terminal and wait until it is ready; stop it.

Where a daemon starts is decided here: with a node service running (``ketch service
start``), the service forks it from a process that has imported everything already
(``node_service``), and the daemon answers on the request's connection; without one, it
is a fork of this process (no second interpreter start). Either way it runs in its own
session, its output in its log file, and says ``ready`` with a ``Ready`` record as JSON,
or ``error CODE REASON``, so the caller returns only once the mount is usable, or fails
with the daemon's own one-line reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketch.config import DaemonConfig, from_json, to_json
from ketch.daemon.process import fork_detached
from ketch.daemon.state import (
    MountRecord,
    default_log_file,
    is_mounted,
    read_record,
    remove_record,
    remove_socket,
    state_dir,
)
from ketch.daemon.unix_path import unix_address
from ketch.errors import KetchError, NotFoundError, StorageError, UsageError
from ketch.process_identity import pid_alive

READY = b"ready"
START_TIMEOUT = 120.0  # seconds a daemon has to say ready


@dataclass(frozen=True, slots=True)
class Ready:
    """What a mount daemon says with ``ready``."""

    pid: int
    mountpoint: Path
    started: bool = True  # False: `ketch run` found a live mount of the image, and no daemon
    manifest_digest: str = ""  # `ketch run`: the image's manifest digest and config
    config: dict[str, Any] = field(default_factory=dict)


def service_socket() -> Path:
    """Where the node service (``ketch service start``) listens."""
    return state_dir() / "service.sock"


def daemon_log_file(config: DaemonConfig) -> Path:
    """Where the daemon for ``config`` logs (a `ketch run` daemon: until it knows its
    mountpoint)."""
    if config.mountpoint is None:
        return state_dir() / "logs" / "run-requests.log"
    return default_log_file(config.mountpoint)


def start_daemon(config: DaemonConfig, timeout: float = START_TIMEOUT) -> Ready:
    """A mount daemon for ``config``, started by the node service if one runs, else
    forked from this process; what it said once ready."""
    log_file = daemon_log_file(config)
    message = _via_service(config, log_file, timeout)
    if message is not None:
        return _ready(message)

    def serve(ready_fd: int) -> int:
        from ketch.daemon.mount_daemon import serve_config  # noqa: PLC0415 - FUSE, trio

        return serve_config(config, ready_fd)

    pid, message = _fork(serve, log_file, timeout)
    ready = _ready(message)
    if not ready.started:
        _reap(pid)  # it only looked for a live mount: it exits at once
    return ready


def start_forked(
    serve: Callable[[int], int], log_file: Path, timeout: float = START_TIMEOUT
) -> int:
    """Fork a detached process that runs ``serve(ready_fd)``; its pid once it said ready."""
    return _fork(serve, log_file, timeout)[0]


def _fork(serve: Callable[[int], int], log_file: Path, timeout: float) -> tuple[int, bytes]:
    read_end, write_end = os.pipe()

    def body() -> int:
        os.close(read_end)
        return serve(write_end)

    pid = fork_detached(body, log_file)
    os.close(write_end)
    return pid, _await_ready(read_end, timeout, log_file, pid)


def _via_service(config: DaemonConfig, log_file: Path, timeout: float) -> bytes | None:
    """The daemon's ``ready`` message, the node service having started it; None when no
    service runs. The daemon answers on this very connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(service_socket()) as address:
            sock.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None  # no service on this node (or a stale socket of a dead one)
    except OSError as exc:
        sock.close()
        raise StorageError(
            f"{service_socket()}: cannot reach the node service: {exc.strerror}"
        ) from None
    body = {"daemon": to_json(config), "env": dict(os.environ), "cwd": os.getcwd()}
    try:
        sock.settimeout(timeout)
        sock.sendall(json.dumps(body).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        sock.close()
        raise StorageError(f"{service_socket()}: node service request failed: {exc}") from None
    return _await_ready(sock.detach(), timeout, log_file, None)


def _await_ready(fd: int, timeout: float, log_file: Path, pid: int | None) -> bytes:
    """The ``ready`` message the daemon wrote on ``fd`` (closed here); its error raised,
    as a ``KetchError`` with its exit code. ``pid``: our own child, killed if it is not
    ready in time."""
    deadline = time.monotonic() + timeout
    message = _read_message(fd, deadline)
    if message.startswith(READY) and message.endswith(b"\n"):
        return message
    text = message.decode(errors="replace").strip()
    if text.startswith("error "):
        code, _, reason = text[len("error ") :].partition(" ")
        error = KetchError(reason)
        error.exit_code = int(code) if code.isdigit() else 1
        raise error
    if message:
        raise StorageError(f"daemon: unexpected answer {message[:80]!r}")
    if pid is not None and time.monotonic() >= deadline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pid is not None:
        _reap(pid)
    if time.monotonic() >= deadline:
        raise StorageError(f"daemon did not become ready in {timeout:.0f}s (log: {log_file})")
    raise StorageError(
        f"daemon stopped before it was ready: {_last_line(log_file)} (log: {log_file})"
    )


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _read_message(fd: int, deadline: float) -> bytes:
    """What the daemon said on ``fd`` (closed here): ``ready ...``, ``error ...``, or
    nothing when it closed its end without a word (it died) or the deadline passed."""
    message = b""
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # the daemon closed its end: it said what it had to say, or died
                message += chunk
                if message.startswith(READY) and message.endswith(b"\n"):
                    break
    finally:
        os.close(fd)
    return message


def _ready(message: bytes) -> Ready:
    try:
        return from_json(Ready, json.loads(message[len(READY) :]), "daemon's answer")
    except (UnicodeDecodeError, json.JSONDecodeError, UsageError):
        raise StorageError(f"daemon: unexpected answer {message[:80]!r}") from None


def _last_line(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def signal_ready(
    fd: int | None, error: KetchError | None = None, ready: Ready | None = None
) -> None:
    """Say ``ready`` (with ``ready`` as JSON) or the error on ``fd``, and close it."""
    if fd is None:
        return
    if error is not None:
        message = f"error {error.exit_code} {error.message}\n".encode()
    elif ready is not None:
        message = READY + b" " + json.dumps(to_json(ready), separators=(",", ":")).encode() + b"\n"
    else:
        message = READY + b"\n"
    try:
        while message:
            message = message[os.write(fd, message) :]
    finally:
        os.close(fd)


def unmount(mountpoint: Path, timeout: float = 10.0) -> MountRecord | None:
    """Unmount and stop the daemon; clears a mount whose daemon died."""
    record = read_record(mountpoint)
    mounted = is_mounted(mountpoint)
    if not mounted and record is None:
        raise NotFoundError(f"{mountpoint}: not a Ketch mount")
    if mounted:
        alive = record is not None and pid_alive(record.pid, record.started or None)
        # A dead daemon leaves "transport endpoint is not connected": detach it lazily.
        command = (
            ["fusermount3", "-u", str(mountpoint)]
            if alive
            else ["fusermount3", "-uz", str(mountpoint)]
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 and is_mounted(mountpoint):
            reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
            raise StorageError(f"{mountpoint}: unmount failed: {reason}")
    if record is not None:
        wait_for_exit(record.pid, timeout, started=record.started or None)
        remove_record(mountpoint)
        remove_socket(Path(record.api_sock))  # a killed daemon could not
    return record


def wait_for_exit(pid: int, timeout: float, *, started: int | None = None) -> None:
    """Until ``pid`` has exited (a zombie counts as exited); SIGKILL after ``timeout``.
    With ``started`` (``process_start``), a process that got the pid since is left alone."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid, started):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
