"""A tree 1,500 directories deep with one file at the bottom: a fresh Ketch mount against
the same tree on ext4.

The tree (``d/d/.../d/leaf``) is written to ext4 and, as a one-layer OCI image, converted
by ``ketch convert`` (``bench/tree_image.py``). Each run mounts the image afresh and
empties the kernel's caches, then: ``stat`` of the leaf by its whole path (3,000 bytes:
the kernel looks up 1,500 directories), a read of the leaf, and a walk down, one
directory at a time (``listdir`` and ``openat`` of each level); on the mount, the access
trace is asked for then, and must name the leaf by its path. The same steps on ext4,
after dropping caches too, are the baseline. Median of 5 runs (2 with ``--quick``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.context import BenchError, Context, log
from bench.mounts import check_drop_caches, mounted
from bench.report import Benchmark, ratio, table
from bench.tree_image import Entry, ketch_image, remove_tree, write_tree
from ketch.daemon.api import api_get

DEPTH = 1_500
LEAF = b"at the bottom\n"
STEPS = ("stat", "read", "walk")


def entries() -> list[Entry]:
    out = [Entry(("d",) * (n + 1)) for n in range(DEPTH)]
    out.append(Entry(("d",) * DEPTH + ("leaf",), LEAF))
    return out


def relative() -> str:
    return "/".join(["d"] * DEPTH) + "/leaf"


def _walk(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            if os.listdir(fd) != ["d"]:
                raise BenchError(f"{root}: expected one directory d at each level")
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        if os.listdir(fd) != ["leaf"]:
            raise BenchError(f"{root}: expected the leaf at the bottom")
    finally:
        os.close(fd)


def steps(root: Path) -> dict[str, float]:
    leaf = root / relative()

    def read() -> None:
        if leaf.read_bytes() != LEAF:
            raise BenchError(f"{leaf}: wrong content")

    work: dict[str, Callable[[], None]] = {
        "stat": lambda: os.stat(leaf) and None,
        "read": read,
        "walk": lambda: _walk(root),
    }
    out: dict[str, float] = {}
    for name in STEPS:
        started = time.perf_counter()
        work[name]()
        out[name] = round(time.perf_counter() - started, 5)
    return out


def run(ctx: Context) -> dict[str, Any]:
    runs = ctx.repeats(5, 2)
    load = os.getloadavg()[0]
    tree = ctx.work / "deep-tree"
    try:
        listing = entries()
        write_tree(listing, tree)
        started = time.perf_counter()
        image = ketch_image(listing, ctx.work, "deep-tree")
        convert_seconds = time.perf_counter() - started
        caches = check_drop_caches(tree / relative())
        state = ctx.fresh_dir("deep-tree-state")
        # Resolved: the kernel's mount table names real paths, and .cache may be a link.
        mountpoint = ctx.fresh_dir("deep-tree-mnt").resolve()
        ketch_runs: list[dict[str, float]] = []
        native_runs: list[dict[str, float]] = []
        trace_seconds: list[float] = []
        for number in range(runs):
            cache = ctx.fresh_dir("deep-tree-cache")
            with mounted(image, mountpoint, cache, state) as mount:
                caches.cold()
                ketch_runs.append(steps(mountpoint))
                started = time.perf_counter()
                traced = json.loads(api_get(mount.api_sock, "/api/v1/files"))
                trace_seconds.append(round(time.perf_counter() - started, 5))
                if [entry["path"] for entry in traced] != ["/" + relative()]:
                    raise BenchError("the access trace does not name the leaf by its path")
            caches.cold()
            native_runs.append(steps(tree))
            log(f"deep_tree: run {number + 1}: ketch {ketch_runs[-1]}, ext4 {native_runs[-1]}")
        data: dict[str, Any] = {
            "depth": DEPTH,
            "runs": runs,
            "load_average": round(load, 2),
            "page_cache_how": caches.describe(),
            "convert_seconds": round(convert_seconds, 3),
            "median_trace_seconds": round(statistics.median(trace_seconds), 5),
            "ketch_runs": ketch_runs,
            "native_runs": native_runs,
        }
        for step in STEPS:
            k = round(statistics.median(r[step] for r in ketch_runs), 5)
            n = round(statistics.median(r[step] for r in native_runs), 5)
            data[step] = {"ketch": k, "native": n, "ratio": round(k / n, 2) if n else None}
        return data
    finally:
        remove_tree(tree)


_LABELS = {
    "stat": "`stat` of the leaf by its whole path (1,500 lookups)",
    "read": "read the leaf",
    "walk": "walk down: `listdir` + `openat` at each level",
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
A tree {data["depth"]:,} directories deep (`d/d/.../d/leaf`), written to ext4 and converted from a
one-layer image. Each run mounts afresh with an empty chunk cache; page cache, dentries and
inodes: {data["page_cache_how"]}. Time in milliseconds, median of {data["runs"]} runs (1-minute
load average {data["load_average"]} at the start); ratio = Ketch / ext4 (lower is better).

{table(["step", "ext4 ms", "Ketch mount ms", "Ketch / ext4"], rows)}

After the steps the daemon's access trace named the leaf by its 3,005-byte path:
`/api/v1/files` answered in {data["median_trace_seconds"] * 1000:.1f} ms (one scan of each of the
1,500 directories above it, each holding one entry). For scale: `ketch convert` of the image
took {data["convert_seconds"]:.2f} s.
"""


BENCHMARK = Benchmark("deep_tree", "A tree 1,500 directories deep through a mount", run, render)
