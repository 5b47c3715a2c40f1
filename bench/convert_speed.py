"""How fast ``ketch convert`` turns corpus ``py2`` into a Ketch image, against the machine limit.

The machine limit, measured in the same run: for each of ``py2``'s layers, gunzip the layer
blob in the main thread, and blake3-hash + zstd-compress (level 3, the ``zstandard``
library and settings Ketch uses) the same bytes in 1 MiB pieces on a pool of as many
threads as Ketch uses (one per core). That is Ketch's pipeline with the tar parsing, chunk
bookkeeping, blob writing and bootstrap removed: the work any converter has to do. Ketch's
time over it is the overhead of everything else.

Gunzip uses the inflater Ketch uses (ISA-L, the ``isal`` package); the same limit with
Python's ``gzip`` module (zlib), and with one hash/compress thread fewer (a core left to
gunzip), are measured alongside for reference. All runs alternate, so that drift in the
machine's load hits each alike.
"""

from __future__ import annotations

import gzip
import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import blake3
import zstandard
from isal import igzip

from bench.context import Context, log, oci, remove, run_ketch
from bench.report import Benchmark, mb_per_s, mib, plural, ratio, table
from ketch.storage.open import open_store

IMAGE = "py2"
PIECE = 1 << 20
ZSTD_LEVEL = 3
TARGET = 1.5
_IN_FLIGHT = 64  # pieces queued on the pool at most (Ketch bounds 64 MiB in flight)
_local = threading.local()


def _isal_open(path: Path) -> IO[bytes]:
    return cast(IO[bytes], igzip.open(path, "rb"))  # type: ignore[no-untyped-call]


def _zlib_open(path: Path) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb"))


Inflater = Callable[[Path], IO[bytes]]


def _hash_and_compress(piece: bytes) -> int:
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=False, write_content_size=True
        )
        _local.zstd = compressor
    blake3.blake3(piece).digest()
    return len(compressor.compress(piece))


@dataclass(frozen=True, slots=True)
class LimitRun:
    seconds: float
    decompress_seconds: float  # main-thread time inside gzip reads
    uncompressed_bytes: int
    zstd_bytes: int


def machine_limit(layers: list[Path], workers: int, inflate: Inflater = _isal_open) -> LimitRun:
    started = time.perf_counter()
    decompress = 0.0
    raw = 0
    packed = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="limit") as pool:
        for path in layers:
            inflight: deque[Future[int]] = deque()
            with inflate(path) as layer:
                while True:
                    before = time.perf_counter()
                    piece = layer.read(PIECE)
                    decompress += time.perf_counter() - before
                    if not piece:
                        break
                    raw += len(piece)
                    inflight.append(pool.submit(_hash_and_compress, piece))
                    while len(inflight) > _IN_FLIGHT:
                        packed += inflight.popleft().result()
            while inflight:
                packed += inflight.popleft().result()
    return LimitRun(time.perf_counter() - started, decompress, raw, packed)


def _layer_paths(corpus: Path) -> tuple[list[Path], int]:
    store, tag = open_store(oci(corpus, IMAGE))
    _, manifest, _ = store.resolve(tag)
    paths = []
    for layer in manifest.layers:
        algorithm, _, hexdigest = layer.digest.partition(":")
        paths.append(corpus / "blobs" / algorithm / hexdigest)
    return paths, sum(layer.size for layer in manifest.layers)


def run(ctx: Context) -> dict[str, Any]:
    repeats = ctx.repeats(3, 1)
    workers = os.cpu_count() or 2  # what `ketch convert --workers` defaults to
    layers, compressed = _layer_paths(ctx.corpus)
    for path in layers:  # warm the page cache, so that no run pays for the first read
        with path.open("rb") as f:
            while f.read(8 << 20):
                pass
    limits: list[LimitRun] = []
    spare: list[LimitRun] = []  # one hash/compress thread fewer: a core left to gunzip
    zlib: list[LimitRun] = []  # Python's gzip module instead of ISA-L
    walls: list[float] = []
    builder: list[float] = []
    summary: dict[str, Any] = {}
    for number in range(repeats):
        limits.append(machine_limit(layers, workers))
        log(f"convert_speed: limit run {number + 1}/{repeats}: {limits[-1].seconds:.2f} s")
        if workers > 1:
            spare.append(machine_limit(layers, workers - 1))
        zlib.append(machine_limit(layers, workers, _zlib_open))
        dest = ctx.fresh_dir(f"convert-{number}")
        result = run_ketch(["convert", oci(ctx.corpus, IMAGE), oci(dest, IMAGE)])
        remove(dest)
        summary = result.summary
        walls.append(result.wall_seconds)
        builder.append(float(summary["seconds"]))
        log(f"convert_speed: ketch run {number + 1}/{repeats}: {result.wall_seconds:.2f} s")
    limit_median = statistics.median(run.seconds for run in limits)
    wall_median = statistics.median(walls)
    builder_median = statistics.median(builder)
    return {
        "image": IMAGE,
        "layers": len(layers),
        "layer_compressed_bytes": compressed,
        "uncompressed_bytes": limits[0].uncompressed_bytes,
        "file_bytes": summary["file_bytes"],
        "repeats": repeats,
        "workers": workers,
        "limit": {
            "seconds": [round(run.seconds, 3) for run in limits],
            "median_seconds": round(limit_median, 3),
            "median_decompress_seconds": round(
                statistics.median(run.decompress_seconds for run in limits), 3
            ),
            "zstd_bytes": limits[0].zstd_bytes,
            "decompress_seconds": [round(run.decompress_seconds, 3) for run in limits],
        },
        "limit_spare_core": {
            "workers": workers - 1,
            "seconds": [round(run.seconds, 3) for run in spare],
            "median_seconds": round(statistics.median(run.seconds for run in spare), 3)
            if spare
            else None,
        },
        "limit_zlib": {
            "seconds": [round(run.seconds, 3) for run in zlib],
            "median_seconds": round(statistics.median(run.seconds for run in zlib), 3),
        },
        "ketch": {
            "wall_seconds": [round(s, 3) for s in walls],
            "builder_seconds": builder,
            "median_wall_seconds": round(wall_median, 3),
            "median_builder_seconds": round(builder_median, 3),
            "stored_bytes": summary["stored_bytes"],
            "bootstrap_size": summary["bootstrap_size"],
        },
        "ratio_wall": round(wall_median / limit_median, 3),
        "ratio_builder": round(builder_median / limit_median, 3),
        "target_ratio": TARGET,
    }


def render(data: dict[str, Any]) -> str:
    raw = data["uncompressed_bytes"]
    limit = data["limit"]
    ketch = data["ketch"]
    n = data["repeats"]
    rows = [
        [
            f"machine limit: ISA-L gunzip + blake3 + zstd -{ZSTD_LEVEL} on "
            f"{data['workers']} threads",
            f"{limit['median_seconds']:.2f}",
            mb_per_s(raw, limit["median_seconds"]),
            ratio(1.0),
        ],
        [
            "`ketch convert`, builder time (its `--json` `seconds`)",
            f"{ketch['median_builder_seconds']:.2f}",
            mb_per_s(raw, ketch["median_builder_seconds"]),
            ratio(data["ratio_builder"]),
        ],
        [
            "`ketch convert`, whole process (start-up included)",
            f"{ketch['median_wall_seconds']:.2f}",
            mb_per_s(raw, ketch["median_wall_seconds"]),
            ratio(data["ratio_wall"]),
        ],
    ]
    spare = data.get("limit_spare_core", {})
    if spare.get("median_seconds"):
        rows.insert(
            1,
            [
                f"limit, {plural(spare['workers'], 'hash/compress thread')}: a core left to gunzip",
                f"{spare['median_seconds']:.2f}",
                mb_per_s(raw, spare["median_seconds"]),
                ratio(spare["median_seconds"] / limit["median_seconds"]),
            ],
        )
    zlib = data.get("limit_zlib", {})
    if zlib.get("median_seconds"):
        rows.insert(
            len(rows) - 2,
            [
                "limit with Python's `gzip` (zlib) instead of ISA-L",
                f"{zlib['median_seconds']:.2f}",
                mb_per_s(raw, zlib["median_seconds"]),
                ratio(zlib["median_seconds"] / limit["median_seconds"]),
            ],
        )
    met = data["ratio_wall"] <= data["target_ratio"]
    verdict = "met" if met else "**not met**"
    share = limit["median_decompress_seconds"] / limit["median_seconds"]
    bound = (
        ", so the limit is bound by single-threaded gzip decompression, which the "
        "hash/compress threads keep up with"
        if share >= 0.8
        else "; the rest is handing pieces to, and waiting for, the hash/compress threads"
    )
    return f"""\
Converting corpus `{data["image"]}` ({data["layers"]} gzip layers, {mib(data["layer_compressed_bytes"])}
compressed, {mib(raw)} of uncompressed tar, {mib(data["file_bytes"])} of it file data), no chunk
dictionary, fresh destination each run. MB/s is uncompressed tar bytes per second for every
row. Median of {n} run(s); each run's seconds: limit {limit["seconds"]}, Ketch (whole process)
{ketch["wall_seconds"]}.

{table(["run", "seconds", "uncompressed MB/s", "time vs limit"], rows)}

Target: Ketch's whole-process time at most {data["target_ratio"]}x the machine limit: {verdict}
({ratio(data["ratio_wall"])}). Of the limit's {limit["median_seconds"]:.2f} s the main thread
spends {limit["median_decompress_seconds"]:.2f} s in gunzip ({share:.0%}){bound}. Ketch does
the same work plus tar parsing, chunk bookkeeping, writing {mib(ketch["stored_bytes"])} of
blobs and a {mib(ketch["bootstrap_size"])} bootstrap, and checking each layer's sha256.
"""


BENCHMARK = Benchmark("convert_speed", "Conversion speed (corpus py2)", run, render)
