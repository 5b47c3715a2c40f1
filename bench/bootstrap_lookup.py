"""Open a bootstrap and resolve one deep path, in a fresh process, as the image grows.

For 1k, 10k and 100k files a directory tree with a realistic shape is generated (a flat
``usr/bin``, ``etc`` in small subdirectories, most files in packages under
``usr/lib/python3/dist-packages`` with nested module directories, about one directory per
ten files) plus one path 12 components deep through the biggest directory. ``ketch build``
turns it into an image. Then, each time in a new interpreter (imports not timed), the time
of ``Bootstrap.open(bootstrap blob file)`` + ``resolve(deep path)`` is measured with
``time.perf_counter``; the baseline, in the same process, is ``os.stat`` of the same path
in the generated directory (page cache warm): what the kernel's dentry cache does.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.context import BenchError, Context, log, oci, remove, run_ketch, run_python
from bench.report import Benchmark, mib, table
from ketch.format.bootstrap import Bootstrap
from ketch.image.layout import bootstrap_layer
from ketch.storage.open import open_store

SIZES = (1_000, 10_000, 100_000)
TARGET_MS = 5.0
DEEP = "usr/lib/python3/dist-packages/zz_vendor/src/github.com/acme/widget/internal/codec/leaf.py"
_WORDS = ("core", "util", "io", "net", "api", "data", "tests", "_impl", "ext", "compat")
_EXTS = (".py", ".pyc", ".so", ".txt", ".json", ".h", ".c", ".md", "")
_PER_PACKAGE = 100
_DIRS_PER_PACKAGE = 10

# Runs in a fresh interpreter: argv = bootstrap file, deep path, generated tree.
_SNIPPET = """\
import json, os, sys, time
from pathlib import Path
from ketch.format.bootstrap import Bootstrap
bootstrap, deep, tree = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
target = os.path.join(tree, deep)
t0 = time.perf_counter()
st = os.stat(target)
t1 = time.perf_counter()
image = Bootstrap.open(bootstrap)
t2 = time.perf_counter()
index = image.resolve(deep)
t3 = time.perf_counter()
found = image.inode(index).size
print(json.dumps({"stat": t1 - t0, "open": t2 - t1, "resolve": t3 - t2,
                  "size": found, "stat_size": st.st_size}))
"""


class _Writer:
    """Small files cut from one random buffer (so some repeat, as in real images)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.payload = rng.randbytes(1 << 16)
        self.files = 0
        self.dirs: set[Path] = set()

    def file(self, directory: Path, name: str) -> None:
        if directory not in self.dirs:
            directory.mkdir(parents=True, exist_ok=True)
            self.dirs.add(directory)
        size = min(int(self.rng.lognormvariate(6.5, 1.3)), 16 << 10)
        start = self.rng.randrange(0, len(self.payload) - size)
        (directory / name).write_bytes(self.payload[start : start + size])
        self.files += 1


def generate(root: Path, files: int, seed: int = 1) -> int:
    """Write a tree of ``files`` regular files (plus the deep one) under ``root``; the number
    of directories made."""
    rng = random.Random(seed)
    out = _Writer(rng)
    for i in range(files // 20):
        out.file(root / "usr" / "bin", f"tool{i:05d}")
    for i in range(files // 20):
        out.file(root / "etc" / f"{rng.choice(_WORDS)}{i // 10:04d}.d", f"conf{i:05d}.conf")
    packages = root / "usr" / "lib" / "python3" / "dist-packages"
    number = 0
    while out.files < files:
        package = packages / f"pkg{number:05d}_{rng.choice(_WORDS)}"
        dirs = [package]
        for k in range(_DIRS_PER_PACKAGE - 1):
            dirs.append(rng.choice(dirs) / f"{rng.choice(_WORDS)}{k}")
        for i in range(min(_PER_PACKAGE, files - out.files)):
            name = f"m{i:03d}_{rng.getrandbits(20):05x}{rng.choice(_EXTS)}"
            out.file(rng.choice(dirs), name)
        number += 1
    deep = root / DEEP
    out.file(deep.parent, deep.name)
    return len({p for d in out.dirs for p in [d, *d.parents] if root in p.parents})


def _bootstrap_file(layout: Path, tag: str) -> Path:
    store, _ = open_store(oci(layout, tag))
    _, manifest, _ = store.resolve(tag)
    layer = bootstrap_layer(manifest, f"{layout}:{tag}")
    algorithm, _, hexdigest = layer.digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


@dataclass(frozen=True, slots=True)
class _Size:
    files: int
    dirs: int
    inodes: int
    bootstrap_bytes: int
    build_seconds: float
    open_ms: list[float]
    resolve_ms: list[float]
    stat_ms: list[float]

    def to_json(self) -> dict[str, Any]:
        total = [o + r for o, r in zip(self.open_ms, self.resolve_ms, strict=True)]
        lookup = statistics.median(total)
        stat = statistics.median(self.stat_ms)
        return {
            "files": self.files,
            "dirs": self.dirs,
            "inodes": self.inodes,
            "bootstrap_bytes": self.bootstrap_bytes,
            "build_seconds": round(self.build_seconds, 2),
            "runs": len(total),
            "median_open_ms": round(statistics.median(self.open_ms), 4),
            "median_resolve_ms": round(statistics.median(self.resolve_ms), 4),
            "median_lookup_ms": round(lookup, 4),
            "max_lookup_ms": round(max(total), 4),
            "median_stat_ms": round(stat, 4),
            "ratio": round(lookup / stat, 1) if stat > 0 else None,
        }


def _measure(ctx: Context, files: int, runs: int) -> _Size:
    tree = ctx.fresh_dir(f"tree-{files}")
    layout = ctx.work / f"image-{files}"
    remove(layout)
    try:
        dirs = generate(tree, files)
        log(f"bootstrap_lookup: {files} files generated, building")
        build = run_ketch(["build", str(tree), oci(layout, "t")])
        path = _bootstrap_file(layout, "t")
        image = Bootstrap.open(path)
        inodes = image.inode_count
        image.close()
        opens: list[float] = []
        resolves: list[float] = []
        stats: list[float] = []
        for _ in range(runs):
            sample = run_python(_SNIPPET, [str(path), DEEP, str(tree)])
            if sample["size"] != sample["stat_size"]:
                raise BenchError(
                    f"{DEEP}: bootstrap size {sample['size']}, on disk {sample['stat_size']}"
                )
            opens.append(sample["open"] * 1000)
            resolves.append(sample["resolve"] * 1000)
            stats.append(sample["stat"] * 1000)
        return _Size(
            files + 1, dirs, inodes, path.stat().st_size, build.wall_seconds, opens, resolves, stats
        )
    finally:
        remove(tree)
        remove(layout)


def run(ctx: Context) -> dict[str, Any]:
    sizes = SIZES[:2] if ctx.quick else SIZES
    runs = ctx.repeats(20, 7)
    results = []
    for files in sizes:
        size = _measure(ctx, files, runs)
        results.append(size.to_json())
        log(f"bootstrap_lookup: {files} files: {results[-1]['median_lookup_ms']:.3f} ms")
    first, last = results[0]["median_lookup_ms"], results[-1]["median_lookup_ms"]
    return {
        "deep_path": DEEP,
        "depth": DEEP.count("/") + 1,
        "target_ms": TARGET_MS,
        "sizes": results,
        "growth": round(last / first, 2) if first > 0 else None,
    }


def render(data: dict[str, Any]) -> str:
    rows = [
        [
            f"{s['files']:,}",
            f"{s['dirs']:,}",
            mib(s["bootstrap_bytes"]),
            f"{s['median_open_ms']:.3f}",
            f"{s['median_resolve_ms']:.3f}",
            f"**{s['median_lookup_ms']:.3f}**",
            f"{s['max_lookup_ms']:.3f}",
            f"{s['median_stat_ms'] * 1000:.1f} µs",
            f"{s['ratio']}x",
        ]
        for s in data["sizes"]
    ]
    worst = max(s["median_lookup_ms"] for s in data["sizes"])
    verdict = "met" if worst < data["target_ms"] else "**not met**"
    sizes = data["sizes"]
    return f"""\
Deep path ({data["depth"]} components, through the largest directory):
`/{data["deep_path"]}`. Times in ms, median of {sizes[0]["runs"]} fresh processes per size
(max also shown); `os.stat` is the baseline, measured in the same processes.

{table(["files", "dirs", "bootstrap", "open ms", "resolve ms", "open+resolve ms", "max ms", "os.stat", "vs stat"], rows)}

Target: open+resolve under {data["target_ms"]:.0f} ms and flat: {verdict} (worst median
{worst:.3f} ms; {sizes[-1]["files"]:,} files take {data["growth"]}x the time of
{sizes[0]["files"]:,}). Opening maps the file and checks only the superblock; the lookup
binary-searches one sorted dirent range per path component, so it grows with the log of
the directory sizes, not with the image.
"""


BENCHMARK = Benchmark("bootstrap_lookup", "Bootstrap open + deep lookup", run, render)
