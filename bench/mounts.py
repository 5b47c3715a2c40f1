"""Mount Ketch images for a benchmark, and put the kernel's caches in a known state.

``mounted()`` runs ``ketch mount`` (timed: it returns once the mount is ready) with a
private ``KETCH_STATE_DIR``, so the benchmark's mount records, sockets and logs never mix
with anyone else's, and always runs ``ketch umount`` on the way out, failure or not (with
``fusermount3 -uz`` and a kill of the daemon it started as the last resort).

Cold caches: ``drop_caches()`` is ``sync; echo 3 > /proc/sys/vm/drop_caches`` (page cache,
dentries and inodes, FUSE mounts included). ``check_drop_caches()`` proves it on a probe
file with ``fincore`` once per benchmark; where the write is refused (not root, some
containers), ``evict()`` falls back to ``posix_fadvise(DONTNEED)`` on the files a
benchmark names, which empties their page cache but not the dentry cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.context import REPO, BenchError, ketch_command, log
from ketch.daemon.api import api_get

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
_TIMEOUT = 300
_BLOCK = 1 << 20


# -- the kernel's caches ----------------------------------------------------------------


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False if the kernel refused."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def evict(paths: Iterable[Path]) -> None:
    """Drop the page cache of these files (the fallback when drop_caches is refused)."""
    os.sync()
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            with contextlib.suppress(OSError):
                fd = os.open(file, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def resident_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (``fincore``); None if that cannot be told."""
    if shutil.which("fincore") is None:
        return None
    proc = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    try:
        return int(proc.stdout.split()[0]) if proc.returncode == 0 else None
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class CacheControl:
    """How this machine's page cache is emptied between runs, and whether it was proven."""

    drop_caches: bool
    #: bytes of a just-read probe file still resident after the drop (None: no fincore)
    resident_after: int | None

    def cold(self, files: Iterable[Path] = ()) -> None:
        """Empty the page cache (everything, or at least ``files``)."""
        if not (self.drop_caches and drop_caches()):
            evict(files)

    def describe(self) -> str:
        if self.drop_caches:
            how = "`sync; echo 3 > /proc/sys/vm/drop_caches` before each timed run"
        else:
            how = (
                "`/proc/sys/vm/drop_caches` refused here, so `posix_fadvise(DONTNEED)` on the "
                "files read (page cache only; dentries stay cached)"
            )
        if self.resident_after is None:
            return how + " (not checked: no `fincore`)"
        return how + f" (checked: a probe file had {self.resident_after} bytes cached after it)"

    def to_json(self) -> dict[str, object]:
        return {"drop_caches": self.drop_caches, "resident_after": self.resident_after}


def check_drop_caches(probe: Path) -> CacheControl:
    """Read ``probe`` into the page cache, drop caches, and see what is left of it."""
    read_file(probe)
    works = drop_caches()
    if not works:
        log("/proc/sys/vm/drop_caches refused; falling back to posix_fadvise(DONTNEED)")
        evict([probe])
    left = resident_bytes(probe)
    if left:
        raise BenchError(f"{probe}: expected an empty page cache after the drop, found {left} B")
    return CacheControl(works, left)


# -- reading ----------------------------------------------------------------------------


def read_file(path: Path, block: int = _BLOCK) -> tuple[int, float]:
    """Read ``path`` whole from a fresh open in ``block``-byte reads (like ``dd bs=1M``);
    bytes read and seconds, open included."""
    buffer = bytearray(block)
    total = 0
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while count := os.readv(fd, [buffer]):
            total += count
    finally:
        os.close(fd)
    return total, time.perf_counter() - started


# -- mounts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mount:
    mountpoint: Path
    pid: int
    api_sock: Path
    #: the daemon's log (its stderr)
    log_file: Path
    #: wall time of ``ketch mount``, from invoking it until it returned (mount ready)
    seconds: float
    #: what ``ketch mount`` wrote to stderr
    stderr: str

    def metrics(self) -> dict[str, float]:
        """The daemon's Prometheus counters (unlabelled samples), by name."""
        out: dict[str, float] = {}
        for line in api_get(self.api_sock, "/metrics").decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                out[name] = float(value)
        return out


def _env(state_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(extra or {}), "KETCH_STATE_DIR": str(state_dir)}


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint.absolute())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split(" ")[4].encode().decode("unicode_escape") == target:
            return True
    return False


def mount(
    image: str,
    mountpoint: Path,
    cache_dir: Path,
    state_dir: Path,
    env: dict[str, str] | None = None,
) -> Mount:
    """``ketch mount IMAGE MOUNTPOINT --cache-dir CACHE_DIR``, timed (``env``: extra
    environment, which the daemon inherits); unmounted again if anything after the mount
    itself fails."""
    command = [
        *ketch_command(),
        "mount",
        image,
        str(mountpoint),
        "--cache-dir",
        str(cache_dir),
        "--json",
    ]
    started = time.perf_counter()
    proc = subprocess.run(
        command,
        cwd=REPO,
        env=_env(state_dir, env),
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    seconds = time.perf_counter() - started
    try:
        if proc.returncode != 0:
            raise BenchError(
                f"`{' '.join(command)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            )
        summary = json.loads(proc.stdout)
        return Mount(
            mountpoint=mountpoint,
            pid=int(summary["pid"]),
            api_sock=Path(summary["api_sock"]),
            log_file=Path(summary["log_file"]),
            seconds=seconds,
            stderr=proc.stderr,
        )
    except BaseException:
        if is_mounted(mountpoint):
            umount(mountpoint, state_dir, None)
        raise


def umount(mountpoint: Path, state_dir: Path, pid: int | None) -> None:
    """``ketch umount``; if that fails, detach lazily and stop the daemon (``pid``) we
    started. Raises only if the mountpoint is still mounted at the end."""
    proc = subprocess.run(
        [*ketch_command(), "umount", str(mountpoint)],
        cwd=REPO,
        env=_env(state_dir),
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    if proc.returncode == 0 and not is_mounted(mountpoint):
        return
    log(f"ketch umount {mountpoint} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False, timeout=_TIMEOUT)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if is_mounted(mountpoint):
        raise BenchError(f"{mountpoint}: still mounted after ketch umount and fusermount3 -uz")


@contextlib.contextmanager
def mounted(image: str, mountpoint: Path, cache_dir: Path, state_dir: Path) -> Iterator[Mount]:
    """A mount for the ``with`` block, unmounted when it ends (failure or not)."""
    mount_ = mount(image, mountpoint, cache_dir, state_dir)
    try:
        yield mount_
    finally:
        umount(mountpoint, state_dir, mount_.pid)


@contextlib.contextmanager
def node_service(state_dir: Path) -> Iterator[None]:
    """``ketch service start`` for the ``with`` block, as a node runs it before any
    container: mounts under ``state_dir`` then fork from it instead of starting an
    interpreter and importing FUSE, trio and the store clients."""

    def service(action: str, *, check: bool) -> None:
        subprocess.run(
            [*ketch_command(), "service", action],
            cwd=REPO,
            env=_env(state_dir, None),
            capture_output=True,
            check=check,
            timeout=_TIMEOUT,
        )

    service("start", check=True)
    try:
        yield
    finally:
        service("stop", check=False)
