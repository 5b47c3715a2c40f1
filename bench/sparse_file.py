"""A file of 2^40 bytes of holes (a few bytes of data in the middle): build, bootstrap,
mount reads and unpack, against the same sparse file on ext4.

``truncate -s 1T`` plus a 27-byte mark at 2^39 + 12,345, on ext4; ``ketch build`` of its
directory (holes found with ``SEEK_HOLE``, never read) is timed, and its bootstrap sized.
Each run mounts the image afresh with an empty chunk cache and empties the page cache,
then: ``stat``, a 4 KiB read at the start, one across the mark, one at the end, and 256 MiB
of holes read in 1 MiB reads; the same steps on the ext4 file are the baseline. Then
``ketch unpack`` is timed once, and the blocks its file takes counted. Median of 3 runs
(1 with ``--quick``).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.context import BenchError, Context, log, oci, remove, run_ketch
from bench.mounts import check_drop_caches, mounted
from bench.report import Benchmark, ratio, table

SIZE = 1 << 40
MARK_AT = (1 << 39) + 12_345
MARK = b"in the middle of a terabyte"
SEQUENTIAL = 256 << 20
STEPS = ("stat", "start", "middle", "end", "sequential")


def _write(root: Path) -> Path:
    root.mkdir(parents=True)
    path = root / "big"
    with open(path, "wb") as f:
        f.truncate(SIZE)
        f.seek(MARK_AT)
        f.write(MARK)
    return path


def steps(path: Path) -> dict[str, float]:
    fd = os.open(path, os.O_RDONLY)
    try:

        def read(offset: int, size: int, expected: bytes) -> None:
            if os.pread(fd, size, offset) != expected:
                raise BenchError(f"{path}: wrong bytes at {offset}")

        def sequential() -> None:
            offset = SIZE - SEQUENTIAL
            zeros = bytes(1 << 20)
            while offset < SIZE:
                read(offset, 1 << 20, zeros)
                offset += 1 << 20

        work: dict[str, Callable[[], None]] = {
            "stat": lambda: None if os.stat(path).st_size == SIZE else _wrong(path),
            "start": lambda: read(0, 4096, bytes(4096)),
            "middle": lambda: read(MARK_AT - 100, 4096, bytes(100) + MARK + bytes(3969)),
            "end": lambda: read(SIZE - 4096, 4096, bytes(4096)),
            "sequential": sequential,
        }
        out: dict[str, float] = {}
        for name in STEPS:
            started = time.perf_counter()
            work[name]()
            out[name] = round(time.perf_counter() - started, 5)
        return out
    finally:
        os.close(fd)


def _wrong(path: Path) -> None:
    raise BenchError(f"{path}: expected {SIZE} bytes")


def run(ctx: Context) -> dict[str, Any]:
    runs = ctx.repeats(3, 1)
    load = os.getloadavg()[0]
    source = ctx.work / "sparse-file"
    remove(source)
    try:
        big = _write(source)
        layout = ctx.fresh_dir("sparse-file-image")
        image = oci(layout, "t")
        built = run_ketch(["build", str(source), image])
        summary = run_ketch(["inspect", image]).summary
        probe = source / "probe"  # not the big file: the check reads its probe whole
        probe.write_bytes(os.urandom(1 << 20))
        caches = check_drop_caches(probe)
        state = ctx.fresh_dir("sparse-file-state")
        mountpoint = ctx.fresh_dir("sparse-file-mnt").resolve()
        ketch_runs: list[dict[str, float]] = []
        native_runs: list[dict[str, float]] = []
        for number in range(runs):
            cache = ctx.fresh_dir("sparse-file-cache")
            with mounted(image, mountpoint, cache, state):
                caches.cold()
                ketch_runs.append(steps(mountpoint / "big"))
            caches.cold([big])
            native_runs.append(steps(big))
            log(f"sparse_file: run {number + 1}: ketch {ketch_runs[-1]}, ext4 {native_runs[-1]}")
        tree = ctx.work / "sparse-file-tree"
        remove(tree)
        started = time.perf_counter()
        run_ketch(["unpack", image, str(tree)])
        unpack_seconds = time.perf_counter() - started
        unpacked = (tree / "big").stat()
        if unpacked.st_size != SIZE:
            raise BenchError(f"{tree / 'big'}: expected {SIZE} bytes, found {unpacked.st_size}")
        remove(tree)
        data: dict[str, Any] = {
            "runs": runs,
            "load_average": round(load, 2),
            "page_cache_how": caches.describe(),
            "build_seconds": round(built.wall_seconds, 3),
            "bootstrap_bytes": summary["bootstrap"]["size"],
            "chunks": summary["chunks"],
            "stored_bytes": summary["stored_bytes"],
            "unpack_seconds": round(unpack_seconds, 3),
            "unpacked_disk_bytes": unpacked.st_blocks * 512,
            "ketch_runs": ketch_runs,
            "native_runs": native_runs,
        }
        for step in STEPS:
            k = round(statistics.median(r[step] for r in ketch_runs), 5)
            n = round(statistics.median(r[step] for r in native_runs), 5)
            data[step] = {"ketch": k, "native": n, "ratio": round(k / n, 2) if n else None}
        return data
    finally:
        remove(source)


_LABELS = {
    "stat": "`stat`",
    "start": "read 4 KiB at the start (a hole)",
    "middle": "read 4 KiB across the mark (data)",
    "end": "read 4 KiB at the end (a hole)",
    "sequential": "read the last 256 MiB (holes) in 1 MiB reads",
}


def render(data: dict[str, Any]) -> str:
    rows = [
        [
            _LABELS[step],
            f"{data[step]['native'] * 1000:.1f}",
            f"{data[step]['ketch'] * 1000:.1f}",
            ratio(data[step]["ratio"] or 0),
        ]
        for step in STEPS
    ]
    return f"""\
A file of 2^40 bytes, all holes but a 27-byte mark in the middle, on ext4. `ketch build` of
its directory took {data["build_seconds"]:.1f} s: {data["chunks"]:,} chunk references, a
{data["bootstrap_bytes"] / 2**20:.1f} MiB bootstrap, {data["stored_bytes"]} bytes of blob.
Each run mounts afresh with an empty chunk cache; page cache: {data["page_cache_how"]}. Time
in milliseconds, median of {data["runs"]} runs (1-minute load average {data["load_average"]}
at the start); ratio = Ketch / ext4 (lower is better).

{table(["step", "ext4 ms", "Ketch mount ms", "Ketch / ext4"], rows)}

`ketch unpack` wrote the file in {data["unpack_seconds"]:.1f} s, sparse:
{data["unpacked_disk_bytes"] / 2**20:.1f} MiB on disk (the chunk holding the mark).
"""


BENCHMARK = Benchmark(
    "sparse_file", "A file of 2^40 bytes of holes: build, mount reads, unpack", run, render
)
