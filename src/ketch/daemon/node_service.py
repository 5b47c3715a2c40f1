"""The node service: one long-lived process per node that starts mount daemons.

A mount daemon started by `ketch mount` itself pays for its imports (FUSE, trio, the
registry and S3 clients) on every mount, a few hundred milliseconds on a cold node.
The service pays them once: it imports everything a daemon needs, then waits on a unix
socket (``service.sock`` in the state directory, root only). For each request it forks
twice; the grandchild, in its own session and re-parented to init, becomes the mount
daemon with the client's environment and working directory, and answers the client on
the request's own connection (``ready``, or ``error CODE REASON``), exactly as a daemon
forked by `ketch mount` answers on its pipe. The service holds no mount state and never
starts a thread (fork and threads do not mix): stopping it leaves every mount serving.

The request is one JSON object, ``{"daemon": DaemonConfig, "env": {...}, "cwd": "..."}``
(``config.to_json``), checked once, in the service, before anything forks.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import socket
import struct
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ketch.config import DaemonConfig, from_json
from ketch.daemon.launcher import (
    daemon_log_file,
    service_socket,
    signal_ready,
    wait_for_exit,
)
from ketch.daemon.process import fork_detached, setup_logging
from ketch.daemon.state import state_dir
from ketch.daemon.unix_path import unix_address
from ketch.errors import KetchError, NotFoundError, UsageError
from ketch.process_identity import pid_alive, process_start

log = logging.getLogger("ketch.service")

# Everything a daemon may import, so that no daemon imports anything after the fork.
_PRELOAD = (
    "ketch.daemon.mount_daemon",
    "ketch.storage.registry.store",
    "ketch.storage.registry.client",
    "ketch.storage.registry.mirrors",
    "ketch.storage.s3_store",
)
_MAX_REQUEST = 1 << 20
_REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request


def pid_file() -> Path:
    return state_dir() / "service.pid"


def service_log_file() -> Path:
    return state_dir() / "logs" / "service.log"


@dataclass(frozen=True, slots=True)
class _Request:
    daemon: DaemonConfig
    env: dict[str, str]  # the client's environment and working directory, for the daemon
    cwd: str


def _parse_request(raw: bytes) -> _Request:
    try:
        body = json.loads(raw)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of over 4300 digits
        raise UsageError(f"node service request: not JSON ({exc})") from None
    request = from_json(_Request, body, "node service request")
    if not request.cwd.startswith("/"):
        raise UsageError("node service request.cwd: expected an absolute path")
    return request


class _StopRequestedError(Exception):
    """SIGTERM or SIGINT: the service stops listening."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _StopRequestedError


def _peer_allowed(conn: socket.socket) -> bool:
    """Only root and the service's own user may start daemons (the socket is 0600 too)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.getuid())


def _receive(conn: socket.socket) -> bytes:
    conn.settimeout(_REQUEST_TIMEOUT)
    parts: list[bytes] = []
    size = 0
    while True:
        part = conn.recv(65536)
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > _MAX_REQUEST:
            raise UsageError(f"node service request: over {_MAX_REQUEST} bytes")
        parts.append(part)


def _answer_error(conn: socket.socket, error: KetchError) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(f"error {error.exit_code} {error.message}\n".encode())


def _fork_daemon(listener: socket.socket, conn: socket.socket, raw: bytes) -> None:
    """Fork the daemon ``raw`` asks for; it answers on ``conn``. Returns in the service."""
    request = _parse_request(raw)

    def serve() -> int:
        from ketch.daemon.mount_daemon import serve_config  # noqa: PLC0415 - preloaded

        listener.close()
        os.environ.clear()
        os.environ.update(request.env)
        try:
            os.chdir(request.cwd)
            # The daemon says ready (or its error) on a copy: the connection itself stays
            # open here, to report a crash of the daemon before it got that far.
            return serve_config(request.daemon, os.dup(conn.fileno()))
        except KetchError as exc:
            _answer_error(conn, exc)
            return exc.exit_code
        except BaseException as exc:  # a bug: say it on the connection, trace it in the log
            traceback.print_exc()
            _answer_error(conn, KetchError(f"daemon failed: {type(exc).__name__}: {exc}"))
            return 70

    fork_detached(serve, daemon_log_file(request.daemon), orphan=True)


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with unix_address(path) as address:
                probe.connect(address)
        except OSError:
            path.unlink()  # left by a service that died
        else:
            raise UsageError(f"{path}: a node service is already running")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with unix_address(path) as address:
            listener.bind(address)
    except OSError as exc:
        listener.close()
        raise UsageError(f"{path}: cannot listen: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    listener.listen(64)
    return listener


def _preload() -> None:
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional client missing: its daemons import it later
            log.warning("preload skipped module=%s error=%r", name, str(exc))


def serve_node(ready_fd: int | None = None) -> int:
    """Run the node service in this process until SIGTERM or SIGINT; the exit code."""
    setup_logging()
    path = service_socket()
    try:
        _preload()
        listener = _listen(path)
    except KetchError as exc:
        log.error("service failed error=%r", exc.message)
        signal_ready(ready_fd, exc)
        return exc.exit_code
    pid_file().write_text(f"{os.getpid()} {process_start(os.getpid()) or 0}\n")
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    # Objects alive now are shared by every daemon forked later: keep the collector from
    # touching (and so copying) their pages in each child.
    gc.freeze()
    log.info("node service listening socket=%s", path)
    signal_ready(ready_fd)
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                try:
                    if not _peer_allowed(conn):
                        raise UsageError("node service: permission denied")
                    _fork_daemon(listener, conn, _receive(conn))
                except KetchError as exc:
                    log.warning("request refused error=%r", exc.message)
                    _answer_error(conn, exc)
                except OSError as exc:
                    log.warning("request failed error=%r", str(exc))
                except _StopRequestedError:
                    raise
                except Exception as exc:  # a bug: this request fails, the service serves on
                    log.exception("request failed error=%r", str(exc))
                    _answer_error(conn, KetchError(f"node service: {type(exc).__name__}: {exc}"))
    except _StopRequestedError:
        log.info("node service stopping")
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            pid_file().unlink()
    return 0


def _service_process() -> tuple[int, int | None] | None:
    """The pid and start time the pid file records (start time None: not recorded)."""
    try:
        fields = pid_file().read_text().split()
        pid = int(fields[0])
        started = int(fields[1]) if len(fields) > 1 and int(fields[1]) else None
    except (OSError, ValueError, IndexError):
        return None
    return pid, started


def _live_service() -> tuple[int, int | None] | None:
    """The live node service's pid and start time, or None (a pid file left by a service
    that died names no process, or another one that has the pid since: both are None)."""
    recorded = _service_process()
    if recorded is None or not (pid_alive(*recorded) and service_socket().exists()):
        return None
    return recorded


def service_pid() -> int | None:
    """The live node service's pid, or None."""
    live = _live_service()
    return live[0] if live is not None else None


def stop_service(timeout: float = 10.0) -> int:
    """SIGTERM the node service and wait for it to go; its pid."""
    live = _live_service()
    if live is None:
        raise NotFoundError(f"{service_socket()}: no node service is running")
    pid, started = live
    os.kill(pid, signal.SIGTERM)
    wait_for_exit(pid, timeout, started=started)
    return pid
