"""Start a daemon detached from the terminal and wait until it is ready; stop it.

With a node service running (``ketch service start``), the service forks the daemon from
a process that has imported everything already (``node_service``), and the daemon
answers on the request's connection. Without one, the daemon is a fork of the `ketch`
process (no second interpreter start, none of the command-line imports again). Either way
it runs in its own session, its output going to its log file, and reports readiness, or
the reason it failed, so `ketch mount` returns only once the mount is usable, or fails
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
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ketch.daemon.state import (
    MountRecord,
    is_mounted,
    open_log,
    read_record,
    remove_record,
    remove_socket,
    state_dir,
)
from ketch.errors import KetchError, NotFoundError, StorageError
from ketch.process_identity import pid_alive

READY = b"ready"


class _Child(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


class _Forked:
    """A forked child, with the part of ``subprocess.Popen``'s interface we use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.01)
        return self.returncode or 0

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def start_forked(serve: Callable[[int], int], log_file: Path, timeout: float = 120.0) -> int:
    """Fork; the child detaches and runs ``serve(ready_fd)``. The child's pid once ready."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 70
        try:
            os.close(read_end)
            os.setsid()
            log = open_log(log_file)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = serve(write_end)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    return _await_ready(_Forked(pid), read_end, log_file, timeout)


def _read_message(fd: int, deadline: float) -> bytes:
    """What the daemon said on ``fd`` (closed here): ``ready``, ``error ...``, or nothing
    when it closed its end without a word (it died) or the deadline passed."""
    message = b""
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break  # the daemon closed its end: it said what it had to say, or died
                message += chunk
                if message.startswith(READY) and message.endswith(b"\n"):
                    break
    finally:
        os.close(fd)
    return message


def _raise_reported(message: bytes) -> None:
    """Raise the daemon's own ``error CODE REASON`` as a ``KetchError``."""
    text = message.decode(errors="replace").strip()
    if text.startswith("error "):
        code, _, reason = text[len("error ") :].partition(" ")
        error = KetchError(reason)
        error.exit_code = int(code) if code.isdigit() else 1
        raise error


def _await_ready(process: _Child, read_end: int, log_file: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    message = _read_message(read_end, deadline)
    if message.startswith(READY):
        return process.pid
    if not message:
        # The pipe closed without a word: the daemon died, or is about to.
        try:
            process.wait(timeout=2 if time.monotonic() < deadline else 0.1)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise StorageError(
                f"daemon did not become ready in {timeout:.0f}s (log: {log_file})"
            ) from None
    returncode = process.wait(timeout=10)
    _raise_reported(message)
    raise StorageError(
        f"daemon exited with {returncode} before it was ready: {_last_line(log_file)} "
        f"(log: {log_file})"
    )


def service_socket() -> Path:
    """Where the node service (``ketch service start``) listens."""
    return state_dir() / "service.sock"


def start_via_service(
    request: dict[str, object], log_file: Path, timeout: float = 120.0
) -> dict[str, Any] | None:
    """Ask the node service to start a mount daemon for ``request`` (``DaemonConfig``'s
    fields as JSON) and wait until it is ready; what the daemon said with its ``ready``
    (``{}`` for a plain mount). None when no service is running: the caller starts its
    own daemon. The daemon answers on this very connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(service_socket()))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None  # no service on this node (or a stale socket of a dead one)
    except OSError as exc:
        sock.close()
        raise StorageError(
            f"{service_socket()}: cannot reach the node service: {exc.strerror}"
        ) from None
    body = {"daemon": request, "env": dict(os.environ), "cwd": os.getcwd()}
    try:
        sock.settimeout(timeout)
        sock.sendall(json.dumps(body).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        sock.close()
        raise StorageError(f"{service_socket()}: node service request failed: {exc}") from None
    deadline = time.monotonic() + timeout
    message = _read_message(sock.detach(), deadline)
    if message.startswith(READY) and message.endswith(b"\n"):
        return _ready_info(message)
    _raise_reported(message)
    if message:
        raise StorageError(f"node service: unexpected answer {message[:80]!r}")
    if time.monotonic() >= deadline:
        raise StorageError(f"daemon did not become ready in {timeout:.0f}s (log: {log_file})")
    raise StorageError(
        f"daemon started by the node service stopped before it was ready: "
        f"{_last_line(log_file)} (log: {log_file})"
    )


def _ready_info(message: bytes) -> dict[str, Any]:
    text = message[len(READY) :].strip()
    if not text:
        return {}
    try:
        info = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict):
        raise StorageError(f"node service: unexpected answer {message[:80]!r}")
    return info


def _last_line(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def signal_ready(
    fd: int | None, error: KetchError | None = None, info: dict[str, Any] | None = None
) -> None:
    """Say ``ready`` (with ``info`` as JSON, for the node service's clients) or the error."""
    if fd is None:
        return
    if error is not None:
        message = f"error {error.exit_code} {error.message}\n".encode()
    elif info is not None:
        message = READY + b" " + json.dumps(info, separators=(",", ":")).encode() + b"\n"
    else:
        message = READY + b"\n"
    try:
        os.write(fd, message)
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
