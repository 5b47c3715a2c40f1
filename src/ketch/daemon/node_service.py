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

The request is one JSON object: ``{"daemon": {...}, "env": {...}, "cwd": "..."}``, where
``daemon`` holds ``DaemonConfig``'s fields (``daemon_request`` below).
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
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from ketch.daemon.launcher import service_socket, signal_ready, wait_for_exit
from ketch.daemon.state import (
    claim_image_mount,
    default_log_file,
    make_cache_dir,
    open_log,
    state_dir,
)
from ketch.errors import KetchError, NotFoundError, UsageError, local_file_error
from ketch.process_identity import pid_alive, process_start
from ketch.storage.open import StoreOptions

if TYPE_CHECKING:
    from ketch.daemon.service import DaemonConfig

log = logging.getLogger("ketch.service")

# Everything a daemon may import, so that no daemon imports anything after the fork.
_PRELOAD = (
    "ketch.daemon.service",
    "ketch.storage.registry_store",
    "ketch.storage.registry_client",
    "ketch.storage.mirrored_store",
    "ketch.storage.s3_store",
)
_MAX_REQUEST = 1 << 20
_REQUEST_TIMEOUT = 10.0  # seconds a client has to send its request
_DAEMON_KEYS = frozenset(
    {"image", "mountpoint", "cache_dir", "cache_size", "api_sock", "prefetch_file", "store_options"}
)


def pid_file() -> Path:
    return state_dir() / "service.pid"


def service_log_file() -> Path:
    return state_dir() / "logs" / "service.log"


def requests_log_file() -> Path:
    """Where a `ketch run` daemon logs until it knows its mountpoint."""
    return state_dir() / "logs" / "run-requests.log"


def daemon_request(
    image: str,
    mountpoint: Path | None,
    *,
    cache_dir: Path,
    cache_size: int,
    api_sock: Path | None,
    prefetch_file: Path | None,
    store_options: StoreOptions,
) -> dict[str, object]:
    """A mount daemon's configuration as the service's request carries it; no mountpoint
    for ``ketch run`` (the daemon picks the image's own, or finds a live mount of it)."""
    return {
        "image": image,
        "mountpoint": None if mountpoint is None else str(mountpoint),
        "cache_dir": str(cache_dir),
        "cache_size": cache_size,
        "api_sock": None if api_sock is None else str(api_sock),
        "prefetch_file": None if prefetch_file is None else str(prefetch_file),
        "store_options": store_options.to_json(),
    }


def _optional_path(data: dict[str, Any], key: str) -> Path | None:
    value = data[key]
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(f"node service request {key!r}: expected a path")
    return Path(value)


@dataclass(frozen=True, slots=True)
class _Request:
    """A request, checked and decoded once, in the service, before anything forks."""

    image: str
    mountpoint: Path | None  # none: ketch run's, chosen by the image's digest
    cache_dir: Path
    cache_size: int
    api_sock: Path | None
    prefetch_file: Path | None
    store_options: StoreOptions
    env: dict[str, str]
    cwd: str

    def daemon_config(
        self, mountpoint: Path, ready_fd: int, ready_info: dict[str, Any] | None = None
    ) -> DaemonConfig:
        from ketch.daemon.service import DaemonConfig  # noqa: PLC0415 - preloaded

        return DaemonConfig(
            image=self.image,
            mountpoint=mountpoint,
            cache_dir=self.cache_dir,
            cache_size=self.cache_size,
            api_sock=self.api_sock,
            prefetch_file=self.prefetch_file,
            ready_fd=ready_fd,
            ready_info=ready_info,
            store_options=self.store_options,
        )


def _parse_request(raw: bytes) -> _Request:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"node service request: not JSON ({exc})") from None
    if not isinstance(body, dict) or set(body) != {"daemon", "env", "cwd"}:
        raise UsageError("node service request: expected an object with daemon, env and cwd")
    daemon, env, cwd = body["daemon"], body["env"], body["cwd"]
    if not isinstance(daemon, dict) or set(daemon) != _DAEMON_KEYS:
        raise UsageError(f"node service request 'daemon': expected the keys {sorted(_DAEMON_KEYS)}")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise UsageError("node service request 'env': expected strings")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise UsageError("node service request 'cwd': expected an absolute path")
    for key in ("image", "cache_dir"):
        if not isinstance(daemon[key], str) or not daemon[key]:
            raise UsageError(f"node service request {key!r}: expected a string")
    size = daemon["cache_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UsageError("node service request 'cache_size': expected a byte count")
    return _Request(
        image=daemon["image"],
        mountpoint=_optional_path(daemon, "mountpoint"),
        cache_dir=Path(daemon["cache_dir"]),
        cache_size=size,
        api_sock=_optional_path(daemon, "api_sock"),
        prefetch_file=_optional_path(daemon, "prefetch_file"),
        store_options=StoreOptions.from_json(daemon["store_options"]),
        env=env,
        cwd=cwd,
    )


def _log_to(log_file: Path) -> None:
    """Send this process's output (the daemon's log) to ``log_file``."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = open_log(log_file)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _run_requested_daemon(request: _Request, ready_fd: int) -> int:
    """In the forked daemon: mount and serve as ``ketch mount`` would, or, without a
    mountpoint, as ``ketch run`` needs (``_run_image_daemon``)."""
    from ketch.daemon.service import run_daemon  # noqa: PLC0415 - preloaded

    if request.mountpoint is None:
        return _run_image_daemon(request, ready_fd)
    return run_daemon(request.daemon_config(request.mountpoint, ready_fd))


def _run_image_daemon(request: _Request, ready_fd: int) -> int:
    """For ``ketch run``: resolve the image and read its config here, where the registry
    client is loaded already, so the client never loads it; answer with the mountpoint of
    a live mount of the same manifest, or mount the image at its own mountpoint and answer
    once ready. The answer carries the manifest digest and the image config."""
    from ketch.daemon.service import run_daemon  # noqa: PLC0415 - preloaded
    from ketch.image.ketch_image import open_ketch_image  # noqa: PLC0415
    from ketch.storage.open import open_store_with  # noqa: PLC0415

    try:
        store, tag = open_store_with(request.image, request.store_options)
        descriptor, manifest, _ = store.resolve(tag)
        image_config = store.read_config(manifest)
        info: dict[str, Any] = {"manifest_digest": descriptor.digest, "config": image_config}
        mountpoint, ours = claim_image_mount(descriptor.digest)
        if not ours:
            signal_ready(ready_fd, info={**info, "mountpoint": str(mountpoint), "started": False})
            return 0
        _log_to(default_log_file(mountpoint))
        image = open_ketch_image(
            store,
            tag,
            cache_dir=make_cache_dir(request.cache_dir) / "bootstraps",
            resolved=(descriptor, manifest),
        )
    except (KetchError, OSError) as exc:
        error = exc if isinstance(exc, KetchError) else local_file_error(exc)
        log.error("mount failed image=%s error=%r", request.image, error.message)
        signal_ready(ready_fd, error)
        return error.exit_code
    ready_info = {**info, "mountpoint": str(mountpoint), "started": True}
    return run_daemon(request.daemon_config(mountpoint, ready_fd, ready_info), image)


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


def _fork_daemon(listener: socket.socket, conn: socket.socket, request: bytes) -> None:
    """Fork the daemon for ``request``; it answers on ``conn``. Returns in the service."""
    parsed = _parse_request(request)
    mountpoint = parsed.mountpoint
    log_file = requests_log_file() if mountpoint is None else default_log_file(mountpoint)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the middle process exits at once; the daemon is init's child
        return
    code = 70
    try:
        listener.close()
        os.setsid()
        if os.fork():
            os._exit(0)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        _log_to(log_file)
        os.environ.clear()
        os.environ.update(parsed.env)
        os.chdir(parsed.cwd)
        # The daemon says ready (or its error) on a copy: the connection itself stays
        # open here, to report a crash of the daemon before it got that far.
        code = _run_requested_daemon(parsed, os.dup(conn.fileno()))
    except KetchError as exc:
        _answer_error(conn, exc)
        code = exc.exit_code
    except BaseException as exc:  # a bug: say it on the connection, trace it in the log
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        _answer_error(conn, KetchError(f"daemon failed: {type(exc).__name__}: {exc}"))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a service that died
        else:
            raise UsageError(f"{path}: a node service is already running")
        finally:
            probe.close()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("ts=%(asctime)s level=%(levelname)s pid=%(process)d msg=%(message)s")
    )
    logging.getLogger("ketch").handlers[:] = [handler]
    logging.getLogger("ketch").setLevel(logging.INFO)
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
