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

Two more references bound what any converter can reach here: the limit plus the I/O that
a converter cannot skip (the sha256 of every layer it reads, which OCI requires it to
check; the compressed chunks written to a blob file and its sha256, which names it), and
the start-up of a fresh interpreter importing Ketch's convert code (``ketch convert`` is a
process of its own, so its time includes that).
"""

from __future__ import annotations

import gzip
import hashlib
import statistics
import subprocess
import sys
import tempfile
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

from bench.context import REPO, Context, log, oci, remove, run_ketch
from bench.report import Benchmark, mb_per_s, mib, plural, ratio, table
from ketch.config import BUILD, build_workers
from ketch.storage.open import open_store

IMAGE = "py2"
PIECE = 1 << 20
ZSTD_LEVEL = BUILD.compression_level
TARGET = 1.5
_IN_FLIGHT = 64  # pieces queued on the pool at most (Ketch bounds 64 MiB in flight)
_local = threading.local()


def _isal_open(path: Path) -> IO[bytes]:
    return cast(IO[bytes], igzip.open(path, "rb"))  # type: ignore[no-untyped-call]


def _zlib_open(path: Path) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb"))


Inflater = Callable[[Path], IO[bytes]]


@dataclass(frozen=True, slots=True)
class LimitRun:
    seconds: float
    decompress_seconds: float  # main-thread time inside gzip reads
    uncompressed_bytes: int
    zstd_bytes: int


def _hash_and_compress_bytes(piece: bytes) -> bytes:
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "zstd", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_checksum=False, write_content_size=True
        )
        _local.zstd = compressor
    blake3.blake3(piece).digest()
    return compressor.compress(piece)


class _HashedFile:
    """A layer blob read through sha256, as a converter checks the digest it was named by."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self.sha.update(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._file.close()


class _BlobSink:
    """Compressed pieces written to a blob file and hashed on a writer thread of their own,
    as a converter names a blob (so the main thread only hands them over)."""

    def __init__(self, directory: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by close)
        self.sha = hashlib.sha256()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="limit-writer")

    def _write(self, data: bytes) -> None:
        self.sha.update(data)
        self._file.write(data)

    def write(self, data: bytes) -> None:
        self._writer.submit(self._write, data)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.sha.hexdigest()
        self._file.close()


def machine_limit(
    layers: list[Path],
    workers: int,
    inflate: Inflater = _isal_open,
    *,
    blob_dir: Path | None = None,
) -> LimitRun:
    """``blob_dir``: also hash every layer read, and write the compressed pieces to one
    blob file per layer there (sha256 on the writing thread, as a converter names it)."""
    started = time.perf_counter()
    decompress = 0.0
    raw = 0
    packed = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="limit") as pool:
        for path in layers:
            source = _HashedFile(path) if blob_dir is not None else None
            sink = _BlobSink(blob_dir) if blob_dir is not None else None
            inflight: deque[Future[bytes]] = deque()
            with _isal_file(source) if source is not None else inflate(path) as layer:
                while True:
                    before = time.perf_counter()
                    piece = layer.read(PIECE)
                    decompress += time.perf_counter() - before
                    if not piece:
                        break
                    raw += len(piece)
                    inflight.append(pool.submit(_hash_and_compress_bytes, piece))
                    while len(inflight) > _IN_FLIGHT:
                        packed += _land(inflight.popleft(), sink)
            while inflight:
                packed += _land(inflight.popleft(), sink)
            if source is not None:
                while source.read(PIECE):  # the digest covers the whole blob
                    pass
                source.sha.hexdigest()
                source.close()
            if sink is not None:
                sink.close()
    return LimitRun(time.perf_counter() - started, decompress, raw, packed)


def _land(future: Future[bytes], sink: _BlobSink | None) -> int:
    data = future.result()
    if sink is not None:
        sink.write(data)
    return len(data)


def _isal_file(source: _HashedFile) -> IO[bytes]:
    return cast(IO[bytes], igzip.IGzipFile(fileobj=source, mode="rb"))  # type: ignore[no-untyped-call]


_STARTUP = "import ketch.cli.main, ketch.builder.image_builder, ketch.storage.open"


def startup_seconds() -> float:
    """A fresh interpreter that imports what ``ketch convert`` imports, and exits."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", _STARTUP], cwd=REPO, check=True, timeout=60)
    return time.perf_counter() - started


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
    workers = build_workers(BUILD.workers)  # what `ketch convert --workers` defaults to
    layers, compressed = _layer_paths(ctx.corpus)
    for path in layers:  # warm the page cache, so that no run pays for the first read
        with path.open("rb") as f:
            while f.read(8 << 20):
                pass
    limits: list[LimitRun] = []
    spare: list[LimitRun] = []  # one hash/compress thread fewer: a core left to gunzip
    zlib: list[LimitRun] = []  # Python's gzip module instead of ISA-L
    with_io: list[LimitRun] = []  # plus layer sha256, blob writes and their sha256
    startups: list[float] = []
    walls: list[float] = []
    builder: list[float] = []
    summary: dict[str, Any] = {}
    for number in range(repeats):
        limits.append(machine_limit(layers, workers))
        log(f"convert_speed: limit run {number + 1}/{repeats}: {limits[-1].seconds:.2f} s")
        if workers > 1:
            spare.append(machine_limit(layers, workers - 1))
        zlib.append(machine_limit(layers, workers, _zlib_open))
        blob_dir = ctx.fresh_dir(f"limit-blobs-{number}")
        with_io.append(machine_limit(layers, workers, blob_dir=blob_dir))
        remove(blob_dir)
        startups.append(startup_seconds())
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
        "limit_with_io": {
            "seconds": [round(run.seconds, 3) for run in with_io],
            "median_seconds": round(statistics.median(run.seconds for run in with_io), 3),
        },
        "startup": {
            "seconds": [round(s, 3) for s in startups],
            "median_seconds": round(statistics.median(startups), 3),
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


def _row(
    label: str, seconds: float, raw: int, limit_seconds: float, *, speed: bool = True
) -> list[str]:
    """A table row: seconds, MB/s of uncompressed tar (unless ``speed`` is False), and the
    time against the limit's."""
    return [
        label,
        f"{seconds:.2f}",
        mb_per_s(raw, seconds) if speed else "",
        ratio(seconds / limit_seconds),
    ]


def render(data: dict[str, Any]) -> str:
    raw = data["uncompressed_bytes"]
    limit = data["limit"]
    ketch = data["ketch"]
    n = data["repeats"]
    base = limit["median_seconds"]
    rows = [
        _row(
            f"machine limit: ISA-L gunzip + blake3 + zstd -{ZSTD_LEVEL} on {data['workers']} threads",
            base,
            raw,
            base,
        )
    ]
    # The references, each shown when the result file has it (older runs lack some).
    spare = data.get("limit_spare_core", {})
    references = [
        (
            spare,
            f"limit, {plural(spare.get('workers', 0), 'hash/compress thread')}: a core left to gunzip",
            True,
        ),
        (data.get("limit_zlib", {}), "limit with Python's `gzip` (zlib) instead of ISA-L", True),
        (
            data.get("limit_with_io", {}),
            "limit + layer sha256, blob writes and blob sha256 (what a converter cannot skip)",
            True,
        ),
        (
            data.get("startup", {}),
            "start-up: a fresh interpreter importing Ketch's convert code",
            False,
        ),
    ]
    for result, label, speed in references:
        if result.get("median_seconds"):
            rows.append(_row(label, result["median_seconds"], raw, base, speed=speed))
    rows.append(
        _row(
            "`ketch convert`, builder time (its `--json` `seconds`)",
            ketch["median_builder_seconds"],
            raw,
            base,
        )
    )
    rows.append(
        _row(
            "`ketch convert`, whole process (start-up included)",
            ketch["median_wall_seconds"],
            raw,
            base,
        )
    )
    floor_text = ""
    with_io = data.get("limit_with_io", {})
    startup = data.get("startup", {})
    if with_io.get("median_seconds") and startup.get("median_seconds"):
        floor = with_io["median_seconds"] + startup["median_seconds"]
        budget = data["target_ratio"] * base - floor
        floor_text = (
            f" The last two references add up to {floor:.2f} s ({ratio(floor / base)} "
            f"of the limit) before any tar parsing, chunk bookkeeping or bootstrap: the target "
            f"leaves {budget:.2f} s for those on this machine."
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
blobs and a {mib(ketch["bootstrap_size"])} bootstrap, and checking each layer's sha256.{floor_text}
"""


BENCHMARK = Benchmark("convert_speed", "Conversion speed (corpus py2)", run, render)
