"""Daemons killed again and again under readers: errors, never wrong bytes (issue 16).

While readers read a mounted real image (corpus ``py2``), its daemon is sent SIGKILL,
the dead mount is cleared and the image mounted again on the same mountpoint with the
same chunk cache, five times over. Readers may see the dead mount (ENOTCONN; the kernel
answers ECONNABORTED to a request that was in flight when the daemon died), a failed
read (EIO) or the empty mountpoint between two mounts (ENOENT), and nothing else; every
byte they do get is right. Afterwards every chunk cache entry verifies against the
digest it is named by, and a last mount serves every file right, from the cache.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ketch.daemon.api import api_get
from ketch.daemon.state import read_record
from ketch.format.digests import DigestAlgorithm
from tests.integration.ketch_cli import ketch

ROUNDS = 5
READERS = 4
ALLOWED = {errno.ENOTCONN, errno.ECONNABORTED, errno.EIO, errno.ENOENT}


pytestmark = pytest.mark.usefixtures("private_state")


def _mount(image: str, mountpoint: Path, cache: Path) -> int:
    ketch("mount", image, str(mountpoint), "--cache-dir", str(cache))
    record = read_record(mountpoint)
    assert record is not None
    return record.pid


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    pytest.fail(f"daemon {pid} still alive 10 s after SIGKILL")


def _cache_entries(cache: Path) -> list[Path]:
    return [p for p in (cache / "chunks").rglob("*") if p.is_file() and len(p.name) == 64]


def test_sigkill_loop_under_readers_gives_errors_never_wrong_bytes(
    corpus_oci: Path, umoci_unpacked: Callable[[Path, str], Path], tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    ketch("convert", f"oci:{corpus_oci}:py2", f"oci:{layout}:py2")
    image = f"oci:{layout}:py2"
    reference = umoci_unpacked(corpus_oci, "py2")
    numpy = reference / "usr" / "lib" / "python3" / "dist-packages" / "numpy"
    expected = {
        str(p.relative_to(reference)): p.read_bytes()
        for p in sorted(numpy.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
    assert len(expected) > 100
    names = sorted(expected)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"

    stop = threading.Event()
    lock = threading.Lock()
    wrong: list[str] = []
    errors: Counter[int] = Counter()
    right = 0

    def reader(seed: int) -> None:
        nonlocal right
        rng = random.Random(seed)
        while not stop.is_set():
            name = rng.choice(names)
            try:
                data = (mountpoint / name).read_bytes()
            except OSError as exc:
                with lock:
                    errors[exc.errno or 0] += 1
                time.sleep(0.005)
                continue
            with lock:
                if data == expected[name]:
                    right += 1
                else:
                    wrong.append(name)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(READERS)]
    for thread in threads:
        thread.start()
    rng = random.Random(16)
    try:
        for _ in range(ROUNDS):
            pid = _mount(image, mountpoint, cache)
            time.sleep(0.3 + rng.random())  # readers read, chunks reach the cache
            _kill(pid)
            time.sleep(0.2)  # readers meet the dead mount
            ketch("umount", str(mountpoint))  # clears it
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert wrong == []
    assert right > 0
    assert set(errors) <= ALLOWED, errors
    assert errors[errno.ENOTCONN] > 0  # the readers did meet dead daemons

    entries = _cache_entries(cache)
    assert entries
    algo = DigestAlgorithm.BLAKE3
    bad = [p for p in entries if algo.digest(p.read_bytes()).hex() != p.name]
    assert bad == []

    _mount(image, mountpoint, cache)
    for name in names:
        assert (mountpoint / name).read_bytes() == expected[name], name
    record = read_record(mountpoint)
    assert record is not None
    metrics = {
        line.split()[0]: float(line.split()[1])
        for line in api_get(Path(record.api_sock), "/metrics").decode().splitlines()
        if line and not line.startswith("#") and "{" not in line
    }
    assert metrics["ketch_cache_hits_total"] > 0
    assert metrics["ketch_chunk_verify_failures_total"] == 0
    assert metrics["ketch_read_errors_total"] == 0
