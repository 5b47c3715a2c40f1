"""Where live mounts are recorded on the node, so `ketch umount` and `ketch run` find
their daemons: one JSON file per mountpoint under the state directory."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ketch.config import CacheConfig
from ketch.errors import LocalFileError, StorageError, local_file_error
from ketch.process_identity import pid_alive

DEFAULT_STATE_DIR = Path("/run/ketch")
DEFAULT_CACHE_DIR = Path(CacheConfig().dir)


CACHE_DIR_MODE = 0o700  # the daemon runs as root: others must not list cached chunk digests
LOG_MODE = 0o600


def check_cache_dir(path: Path) -> None:
    """``path`` can be the chunk cache: a directory, or nothing yet."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise local_file_error(exc, path, "cannot use as the cache directory") from None
    if not stat.S_ISDIR(info.st_mode):
        raise LocalFileError(f"{path}: cannot use as the cache directory: not a directory")


def make_cache_dir(path: Path) -> Path:
    """The chunk cache directory, made (mode 0700) if missing; one this user owns that
    others can read is closed to them (mode 0700)."""
    check_cache_dir(path)
    try:
        path.mkdir(mode=CACHE_DIR_MODE, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(CACHE_DIR_MODE)
    except OSError as exc:
        raise local_file_error(exc, path, "cannot use as the cache directory") from None
    return path


def open_log(log_file: Path) -> int:
    """``log_file`` opened for appending (mode 0600: logs name paths and digests)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
    os.fchmod(fd, LOG_MODE)
    return fd


def remove_socket(path: Path) -> None:
    """Remove a daemon's control socket once the daemon is gone (a socket only)."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def state_dir() -> Path:
    return Path(os.environ.get("KETCH_STATE_DIR", str(DEFAULT_STATE_DIR)))


@dataclass(slots=True)
class MountRecord:
    mountpoint: str
    pid: int
    image: str
    manifest_digest: str
    root_digest: str
    api_sock: str
    log_file: str
    #: the daemon's start time (``process_start``): with the pid it names the daemon, where
    #: the pid alone may belong to another process by now (0: not recorded)
    started: int = 0

    def alive(self) -> bool:
        return pid_alive(self.pid, self.started or None) and is_mounted(Path(self.mountpoint))


def mountpoint_path(mountpoint: Path | str) -> Path:
    """The one spelling of a mountpoint: absolute, its parent's symlinks resolved, as
    /proc/self/mountinfo lists it (a mount made through a symlinked path is listed at the
    real one). The last component is not resolved: that would stat the mountpoint, which
    hangs on a FUSE mount whose daemon is not serving (yet, or any more)."""
    absolute = os.path.abspath(mountpoint)
    parent, name = os.path.split(absolute)
    return Path(os.path.realpath(parent)) / name if name else Path(absolute)


def _key(mountpoint: Path) -> str:
    return hashlib.sha256(str(mountpoint_path(mountpoint)).encode()).hexdigest()[:16]


def record_path(mountpoint: Path) -> Path:
    return state_dir() / "mounts" / f"{_key(mountpoint)}.json"


def default_api_sock(mountpoint: Path) -> Path:
    return state_dir() / "sockets" / f"{_key(mountpoint)}.sock"


def default_log_file(mountpoint: Path) -> Path:
    return state_dir() / "logs" / f"{_key(mountpoint)}.log"


def write_record(record: MountRecord) -> None:
    path = record_path(Path(record.mountpoint))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(record), f)
    os.replace(tmp, path)


def read_record(mountpoint: Path) -> MountRecord | None:
    try:
        return _record(json.loads(record_path(mountpoint).read_text()))
    except (OSError, ValueError, RecursionError):
        return None


def _record(data: object) -> MountRecord | None:
    """A record from its JSON, or None if it is not one (a damaged or foreign file)."""
    if not isinstance(data, dict):
        return None
    try:
        record = MountRecord(**data)
    except TypeError:
        return None
    fields = asdict(record)
    numbers = ("pid", "started")
    if not all(type(fields[name]) is int and fields[name] >= 0 for name in numbers):
        return None
    if not all(isinstance(value, str) for name, value in fields.items() if name not in numbers):
        return None
    return record if record.pid > 0 else None


def remove_record(mountpoint: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(mountpoint).unlink()


def all_records() -> list[MountRecord]:
    out = []
    for path in sorted((state_dir() / "mounts").glob("*.json")):
        with contextlib.suppress(ValueError, OSError, RecursionError):
            record = _record(json.loads(path.read_text()))
            if record is not None:
                out.append(record)
    return out


def live_mount(manifest_digest: str) -> Path | None:
    """The mountpoint of a live mount of this image on the node, if there is one."""
    for record in all_records():
        if record.manifest_digest == manifest_digest and record.alive():
            return Path(record.mountpoint)
    return None


def image_mountpoint(manifest_digest: str) -> Path:
    """Where `ketch run` mounts an image it finds no live mount of."""
    return state_dir() / "mnt" / manifest_digest.partition(":")[2][:12]


def claim_image_mount(manifest_digest: str, timeout: float = 120.0) -> tuple[Path, bool]:
    """For `ketch run`: a live mount of the image (``(mountpoint, False)``), or its own
    mountpoint with the duty to mount it (``(mountpoint, True)``).

    The duty is an exclusive lock on ``mnt/<id>.lock``, held by this process and its
    forks (the daemon) for as long as they live, so that runs of the same image started
    together make one mount: the others wait for its record to appear."""
    mountpoint = image_mountpoint(manifest_digest)
    mountpoint.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(mountpoint.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while True:
            live = live_mount(manifest_digest)
            if live is not None:
                os.close(fd)
                return live, False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"{mountpoint}: another run is mounting {manifest_digest}, and did "
                        f"not finish in {timeout:.0f}s"
                    ) from None
                time.sleep(0.02)
                continue
            # Ours, until this process and its forks exit (a mount that dies frees it).
            live = live_mount(manifest_digest)  # made between our check and the lock
            if live is not None:
                os.close(fd)
                return live, False
            mountpoint.mkdir(exist_ok=True)
            return mountpoint, True
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def _mountinfo(mountpoint: Path) -> list[str] | None:
    """The /proc/self/mountinfo fields of the mount exactly at ``mountpoint`` (the last
    one, if stacked), read without touching the mountpoint itself."""
    target = str(mountpoint_path(mountpoint))
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split(" ")
        if fields[4].encode().decode("unicode_escape") == target:
            found = fields
    return found


def mount_type(mountpoint: Path) -> str | None:
    fields = _mountinfo(mountpoint)
    return fields[fields.index("-") + 1] if fields else None


def mount_device(mountpoint: Path) -> str | None:
    """``major:minor`` of the mount, which names its backing device info in sysfs."""
    fields = _mountinfo(mountpoint)
    return fields[2] if fields else None


def is_mounted(mountpoint: Path) -> bool:
    return mount_type(mountpoint) is not None
