"""Build a Ketch image: source layers -> tree -> chunks -> blobs + bootstrap -> manifest.

One builder core serves both sources, an OCI image and a local directory; a source also
gives the image its config (the converted image's, or the directory build's Cmd, Env and
WorkingDir). Blobs are published first, then the bootstrap, then config and manifest
(``ketch.image.layout`` writes those); the tag moves last, so an interrupted build leaves
the destination's tags as they were.
"""

from __future__ import annotations

import contextlib
import gc
import stat
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ketch.builder.bootstrap_build import flatten
from ketch.builder.chunk_index import ChunkIndex
from ketch.builder.chunker import DEFAULT_CHUNK_SIZE, make_chunker
from ketch.builder.dir_source import directory_entries
from ketch.builder.layer_builder import (
    DataSource,
    HoleBudget,
    LayerBlob,
    LayerBuilder,
    LayerResult,
)
from ketch.builder.progress import Progress
from ketch.builder.tree import Node, Tree
from ketch.config import BUILD, build_workers
from ketch.errors import BadLayerError, UnsupportedError
from ketch.format.bootstrap_writer import write_bootstrap
from ketch.format.codecs import codec_by_name
from ketch.format.digests import DigestAlgorithm, sha256_hex
from ketch.image import layout
from ketch.image.ketch_image import KetchImage
from ketch.oci import mediatypes as mt
from ketch.oci.layer_stream import BufferPool, LayerStream
from ketch.oci.manifest import Descriptor, Platform
from ketch.oci.tar_layer import EntryKind, LayerEntry, LayerReader, clean_path
from ketch.storage.store import ImageStore


@dataclass(slots=True)
class BuildOptions:
    chunker: str = BUILD.chunker  # every default: ketch.config
    chunk_size: int = DEFAULT_CHUNK_SIZE
    compressor: str = BUILD.compressor
    compression_level: int | None = None
    digest: str = BUILD.digest
    source_date_epoch: int | None = None
    workers: int = field(default_factory=lambda: build_workers(BUILD.workers))
    # Opened images whose chunks this build reuses; ``ketch.convert`` and ``ketch.build``
    # open them from the references they are given.
    chunk_dicts: list[KetchImage] = field(default_factory=list)
    platform: str | None = None  # OS/ARCH[/VARIANT] to pick from an index (default linux/amd64)
    # Files to fetch first after a mount (an access trace, e.g. from `ketch status --json`),
    # stored in the bootstrap's prefetch table; paths not in the image are skipped.
    prefetch_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.platform is not None:
            Platform.parse(self.platform)  # a bad spelling fails before any work


@dataclass(slots=True)
class LayerSummary:
    source: str
    blob: str | None
    blob_size: int
    file_bytes: int
    chunks: int
    stored_chunks: int


@dataclass(slots=True)
class BuildSummary:
    reference: str
    manifest_digest: str
    root_digest: str
    bootstrap_digest: str
    bootstrap_size: int
    source_manifest: str | None
    layers: list[LayerSummary]
    blobs: list[dict[str, Any]]
    file_bytes: int
    stored_bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ImageBuilder:
    def __init__(
        self, dest: ImageStore, options: BuildOptions, progress: Progress | None = None
    ) -> None:
        self.dest = dest
        self.options = options
        self.progress = progress or Progress()
        self.algo = DigestAlgorithm.from_name(options.digest)
        self.codec = codec_by_name(options.compressor, options.compression_level)
        self.chunker = make_chunker(options.chunker, options.chunk_size)
        self.holes = HoleBudget(self.chunker)  # shared by every layer of the build
        self.index = ChunkIndex()
        for image in options.chunk_dicts:
            if image.bootstrap.digest_algorithm is not self.algo:
                raise UnsupportedError(
                    f"chunk dict {image.name}: digest {image.bootstrap.digest_algorithm.label}, "
                    f"but this build uses {self.algo.label}"
                )
            self.index.add_dictionary(image.bootstrap, image.store)
        self.tree = Tree()
        self.layers: list[LayerSummary] = []
        self.layer_blobs: list[tuple[str, int, int]] = []  # (digest, size, chunks) in layer order
        self.source_descriptor: Descriptor | None = None  # the manifest ``convert`` read
        self.config: dict[str, Any] | None = None  # the image config a source gave
        # Layers whose blob the writer thread is still sealing, in layer order.
        self._pending: list[tuple[LayerSummary, Future[LayerBlob]]] = []
        self._started = time.monotonic()

    # -- sources ----------------------------------------------------------------------

    def convert(self, source: ImageStore, tag: str) -> None:
        """Add every layer of an OCI image, and take its config; the image written names
        this source manifest."""
        platform = Platform.parse(self.options.platform) if self.options.platform else None
        descriptor, manifest, _ = source.resolve(tag, platform)
        self.source_descriptor = Descriptor(manifest.media_type, descriptor.digest, descriptor.size)
        self.config = source.read_config(manifest)
        buffers = BufferPool()  # decompression buffers, shared by the layers in turn
        with self._executors() as (pool, writer):
            for number, layer in enumerate(manifest.layers):
                compression = mt.LAYER_COMPRESSION.get(layer.media_type)
                if compression is None:
                    raise UnsupportedError(
                        f"{source.name}:{tag}: layer {number} ({layer.digest}): media type "
                        f"{layer.media_type!r} is not a tar layer"
                    )
                with contextlib.closing(source.open_blob(layer.digest)) as raw:
                    stream = LayerStream(
                        raw, compression, layer.digest, size=layer.size, buffers=buffers
                    )
                    try:
                        reader = LayerReader(stream, layer.digest)  # type: ignore[arg-type]
                        self._add_layer(
                            pool, writer, layer.digest, _tar_entries(reader), layer.size
                        )
                        stream.finish()
                    except BadLayerError:
                        # A blob that is not what the manifest names is reported as such,
                        # even when its damage broke the tar first.
                        stream.finish()
                        raise
                    finally:
                        stream.close()

    def add_directory(
        self,
        root: Path,
        *,
        cmd: Sequence[str] = (),
        env: Sequence[str] = (),
        workdir: str | None = None,
    ) -> None:
        """Add a local directory as one layer; the image's config says how its container
        starts (``cmd``, ``env``, ``workdir``)."""
        self.config = layout.directory_config(cmd, env, workdir)
        with self._executors() as (pool, writer):
            self._add_layer(pool, writer, str(root), directory_entries(root), None)

    @contextlib.contextmanager
    def _executors(self) -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
        """The hash/compress pool, and the one thread that writes and seals blobs (a
        layer's blob is sealed while the next layer is read); blobs are published in
        layer order once the writer is done, or dropped if the build failed."""
        with (
            _gc_paused(),
            ThreadPoolExecutor(self.options.workers, thread_name_prefix="chunk") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="blob") as writer,
        ):
            try:
                yield pool, writer
            except BaseException:
                self._drop_pending()
                raise
            self._publish_pending()

    def _add_layer(
        self,
        pool: ThreadPoolExecutor,
        writer: ThreadPoolExecutor,
        name: str,
        entries: Iterator[tuple[LayerEntry, DataSource | None]],
        total: int | None,
    ) -> None:
        self.progress.layer_started(name, total)
        builder = LayerBuilder(
            scratch=self.dest.scratch_dir(),
            chunker=self.chunker,
            codec=self.codec,
            algo=self.algo,
            index=self.index,
            pool=pool,
            writer=writer,
            on_bytes=self.progress.advance,
            holes=self.holes,
        )
        result: LayerResult = builder.build(name, entries, self.tree.apply)
        summary = LayerSummary(
            name, None, 0, result.file_bytes, result.chunks_seen, result.chunks_stored
        )
        if result.blob is not None:
            self._pending.append((summary, result.blob))  # before anything else can fail
        self.layers.append(summary)
        self.progress.layer_finished(name)

    def _publish_pending(self) -> None:
        """Push the sealed blobs in layer order (a blob is content-addressed and complete,
        so it is harmless if the build fails later)."""
        try:
            while self._pending:
                summary, future = self._pending[0]
                blob = future.result()
                self.dest.push_blob_file(blob.path, blob.digest)
                self._pending.pop(0)
                self.layer_blobs.append((blob.digest, blob.size, blob.chunk_count))
                summary.blob, summary.blob_size = blob.digest, blob.size
        except BaseException:
            self._drop_pending()
            raise

    def _drop_pending(self) -> None:
        """After a failure: wait for the writer's blobs and remove them, leaving no
        temporary file behind."""
        pending, self._pending = self._pending, []
        for _, future in pending:
            # A sealing error is the failure being reported, or one it caused.
            if future.exception() is None:
                future.result().path.unlink(missing_ok=True)

    def _prefetch_nodes(self) -> list[Node]:
        nodes: list[Node] = []
        seen: set[int] = set()
        for path in self.options.prefetch_paths:
            node = self.tree.lookup(clean_path(path.encode("utf-8", "surrogateescape")))
            if _regular(node) and node is not None and id(node) not in seen:
                seen.add(id(node))
                nodes.append(node)
        return nodes

    # -- output -----------------------------------------------------------------------

    def finish(self, tag: str) -> BuildSummary:
        """Write the bootstrap, config and manifest of what was added, and move ``tag``."""
        with _gc_paused():
            return self._finish(tag)

    def _finish(self, tag: str) -> BuildSummary:
        # Blob table: this image's layer blobs in layer order, then the dictionary blobs
        # its tree references, by digest.
        own = [d for d, _, _ in self.layer_blobs]
        sizes: dict[str, tuple[int, int]] = {d: (s, n) for d, s, n in self.layer_blobs}
        referenced = {
            self.index.chunks[d].blob for node in self.tree.nodes() for d, _ in node.chunks
        }
        borrowed = sorted(d for d in referenced if d is not None and d not in sizes)
        for digest in borrowed:
            _, size, count = self.index.dict_blobs[digest]
            sizes[digest] = (size, count)
        tables = flatten(
            self.tree.root,
            self.index,
            own + borrowed,
            sizes,
            algo=self.algo,
            chunk_size=self.chunker.chunk_size,
            cdc=self.chunker.name == "cdc",
            clamp_mtime=self.options.source_date_epoch,
            prefetch=self._prefetch_nodes(),
        )
        for digest in borrowed:
            self.dest.copy_blob_from(self.index.dict_blobs[digest][0], digest)
        bootstrap = write_bootstrap(tables)
        bootstrap_digest = sha256_hex(bootstrap)
        self.dest.push_blob_bytes(bootstrap, bootstrap_digest)
        root_digest = f"{self.algo.label}:{tables.inodes[0].digest.hex()}"

        layers = layout.image_layers(tables.blobs, bootstrap_digest, len(bootstrap), root_digest)
        source = self.source_descriptor
        descriptor = layout.write_manifest(
            self.dest, tag, layers, root_digest, config=self.config, source=source
        )
        file_bytes = sum(layer.file_bytes for layer in self.layers)
        return BuildSummary(
            reference=f"{self.dest.name}:{tag}",
            manifest_digest=descriptor.digest,
            root_digest=root_digest,
            bootstrap_digest=bootstrap_digest,
            bootstrap_size=len(bootstrap),
            source_manifest=source.digest if source is not None else None,
            layers=self.layers,
            blobs=[
                {"digest": b.oci_digest, "size": b.size, "chunks": b.chunk_count}
                for b in tables.blobs
            ],
            file_bytes=file_bytes,
            stored_bytes=sum(b.size for b in tables.blobs),
            seconds=round(time.monotonic() - self._started, 3),
        )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The builder makes hundreds of thousands of long-lived objects and no reference
    cycles: the cyclic collector would only scan them, again and again, on the thread
    that is the build's bottleneck."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _regular(node: Node | None) -> bool:
    return node is not None and stat.S_ISREG(node.mode)


def _tar_entries(reader: LayerReader) -> Iterator[tuple[LayerEntry, DataSource | None]]:
    for entry in reader.entries():
        yield entry, (reader.read_data if entry.kind is EntryKind.FILE else None)
