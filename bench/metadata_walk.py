"""``find ROOT -type f -exec stat {} +`` over corpus ``py2``: a fresh Ketch mount against
umoci's unpacked tree on ext4.

``ketch convert`` makes the Ketch image of ``py2``; ``umoci unpack`` unpacks the same
image (its time is recorded too: what a classic runtime pays before the first walk can
start). Each run mounts the image afresh (the kernel has never seen its dentries or
attributes), empties the kernel's caches (``sync; echo 3 > /proc/sys/vm/drop_caches``:
page cache, dentries, inodes) and times the walk with its ``stat`` output sent to
``/dev/null``; then times it again at once (second walk, kernel caches warm). The same
two walks on the unpacked tree, after dropping caches too, are the baseline. Both trees
are checked to hold the same number of files and entries. Median of 5 runs (2 with
``--quick``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.context import BenchError, Context, log, oci, remove, run_ketch
from bench.mounts import check_drop_caches, mounted
from bench.report import Benchmark, ratio, table

IMAGE = "py2"
TARGET = 3.0
_TIMEOUT = 600


def walk(root: Path) -> float:
    """Seconds of ``find ROOT -type f -exec stat {} + > /dev/null``."""
    started = time.perf_counter()
    subprocess.run(
        ["find", str(root), "-type", "f", "-exec", "stat", "{}", "+"],
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=_TIMEOUT,
    )
    return time.perf_counter() - started


def _count(root: Path, *kind: str) -> int:
    proc = subprocess.run(
        ["find", str(root), *kind, "-printf", "."],
        capture_output=True,
        text=True,
        check=True,
        timeout=_TIMEOUT,
    )
    return len(proc.stdout)


def _unpack(ctx: Context, bundle: Path) -> float:
    remove(bundle)
    started = time.perf_counter()
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{ctx.corpus}:{IMAGE}", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    if proc.returncode != 0:
        raise BenchError(f"umoci unpack {IMAGE} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def run(ctx: Context) -> dict[str, Any]:
    runs = ctx.repeats(5, 2)
    load = os.getloadavg()[0]  # other work on the machine widens the spread of runs
    layout = ctx.work / "walk-image"
    bundle = ctx.work / "walk-bundle"
    remove(layout)
    try:
        convert = run_ketch(["convert", oci(ctx.corpus, IMAGE), oci(layout, IMAGE)])
        unpack_seconds = _unpack(ctx, bundle)
        rootfs = bundle / "rootfs"
        probe = max(
            (p for p in (layout / "blobs" / "sha256").iterdir()), key=lambda p: p.stat().st_size
        )
        caches = check_drop_caches(probe)
        state = ctx.fresh_dir("walk-state")
        mountpoint = ctx.fresh_dir("walk-mnt")
        cache = ctx.fresh_dir("walk-cache")
        image = oci(layout, IMAGE)
        ketch_first: list[float] = []
        ketch_second: list[float] = []
        native_first: list[float] = []
        native_second: list[float] = []
        mount_seconds: list[float] = []
        counts: dict[str, int] = {}
        for number in range(runs):
            with mounted(image, mountpoint, cache, state) as mount:
                mount_seconds.append(mount.seconds)
                caches.cold()
                ketch_first.append(walk(mountpoint))
                ketch_second.append(walk(mountpoint))
                if number == 0:
                    counts["ketch_files"] = _count(mountpoint, "-type", "f")
                    counts["ketch_entries"] = _count(mountpoint)
            caches.cold()
            native_first.append(walk(rootfs))
            native_second.append(walk(rootfs))
            log(
                f"metadata_walk: run {number + 1}: ketch {ketch_first[-1]:.3f} s "
                f"(again {ketch_second[-1]:.3f} s), ext4 {native_first[-1]:.3f} s "
                f"(again {native_second[-1]:.3f} s)"
            )
        counts["native_files"] = _count(rootfs, "-type", "f")
        counts["native_entries"] = _count(rootfs)
        if (counts["ketch_files"], counts["ketch_entries"]) != (
            counts["native_files"],
            counts["native_entries"],
        ):
            raise BenchError(f"the mounted tree and umoci's tree differ in size: {counts}")
        first_k, first_n = _median(ketch_first), _median(native_first)
        second_k, second_n = _median(ketch_second), _median(native_second)
        return {
            "image": IMAGE,
            "files": counts["native_files"],
            "entries": counts["native_entries"] - 1,  # without the root itself
            "runs": runs,
            "load_average": round(load, 2),
            "page_cache": caches.to_json(),
            "page_cache_how": caches.describe(),
            "convert_seconds": round(convert.wall_seconds, 3),
            "umoci_unpack_seconds": round(unpack_seconds, 3),
            "median_mount_seconds": _median(mount_seconds),
            "first": {
                "ketch_seconds": _rounded(ketch_first),
                "native_seconds": _rounded(native_first),
                "median_ketch_seconds": first_k,
                "median_native_seconds": first_n,
                "ratio": round(first_k / first_n, 3),
            },
            "second": {
                "ketch_seconds": _rounded(ketch_second),
                "native_seconds": _rounded(native_second),
                "median_ketch_seconds": second_k,
                "median_native_seconds": second_n,
                "ratio": round(second_k / second_n, 3),
            },
            "target_ratio": TARGET,
        }
    finally:
        remove(layout)
        remove(bundle)


def render(data: dict[str, Any]) -> str:
    first, second = data["first"], data["second"]
    rows = [
        [
            "first walk (fresh mount, caches dropped)",
            f"{first['median_native_seconds']:.3f}",
            f"{first['median_ketch_seconds']:.3f}",
            f"**{ratio(first['ratio'])}**",
        ],
        [
            "second walk (kernel caches warm)",
            f"{second['median_native_seconds']:.3f}",
            f"{second['median_ketch_seconds']:.3f}",
            ratio(second["ratio"]),
        ],
    ]
    verdict = "met" if first["ratio"] <= data["target_ratio"] else "**not met**"
    return f"""\
The walk `find ROOT -type f -exec stat {{}} + > /dev/null` over corpus `{data["image"]}`
({data["files"]:,} files, {data["entries"]:,} entries): a Ketch mount against `umoci unpack`'s tree
on ext4. Each run mounts afresh; page cache, dentries and inodes: {data["page_cache_how"]}. Time
in seconds, median of {data["runs"]} runs (1-minute load average {data.get("load_average", "?")} at the start); ratio = Ketch / ext4 (lower is better). Runs, first
walk: Ketch {first["ketch_seconds"]}, ext4 {first["native_seconds"]}; second walk: Ketch
{second["ketch_seconds"]}, ext4 {second["native_seconds"]}.

{table(["walk", "ext4 (umoci tree) s", "Ketch mount s", "Ketch / ext4"], rows)}

Target: the first walk within {data["target_ratio"]:.0f}x of native: {verdict}
({ratio(first["ratio"])}). For scale: `umoci unpack` of `{data["image"]}` took
{data["umoci_unpack_seconds"]:.2f} s (page cache warm) before its first walk could start;
`ketch mount` took {data["median_mount_seconds"]:.2f} s. The walk runs a few `stat`
processes, each one `statx` per file; on the mount each path's first lookup is a FUSE
request answered from the mmapped bootstrap, and entries and attributes are then cached
by the kernel for a day.
"""


BENCHMARK = Benchmark("metadata_walk", "Metadata walk over a fresh mount (corpus py2)", run, render)
