"""Where live mounts are recorded on the node, so `ketch umount` and `ketch run` find
their daemons: one JSON file per mountpoint under the state directory."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ketch.config import CacheConfig
from ketch.errors import StorageError

DEFAULT_STATE_DIR = Path("/run/ketch")
DEFAULT_CACHE_DIR = Path(CacheConfig().dir)


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


def _key(mountpoint: Path) -> str:
    # abspath, not resolve(): resolving stats the mountpoint, which hangs on a FUSE mount
    # whose daemon is not serving (yet, or any more).
    return hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]


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
    except (OSError, ValueError):
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
        with contextlib.suppress(ValueError, OSError):
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


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: field 3 (state) onwards."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(fields: list[str] | None) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (``fields`` start at field 3)."""
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22): a pid
    and its start time name one process, where a pid alone is reused once it exits."""
    return _start_time(_stat_fields(pid))


def pid_alive(pid: int, started: int | None = None) -> bool:
    """``pid`` runs (a zombie, exited and not yet reaped, does not); with ``started``,
    it must also be the process that started then, not a later one given the same pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return False
    return started is None or _start_time(fields) == started


def _mountinfo(mountpoint: Path) -> list[str] | None:
    """The /proc/self/mountinfo fields of the mount exactly at ``mountpoint`` (the last
    one, if stacked), read without touching the mountpoint itself."""
    target = os.path.abspath(mountpoint)
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
