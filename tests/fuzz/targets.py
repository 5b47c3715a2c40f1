"""The fuzz targets: one function per parser of hostile input, taking the raw bytes.

A target feeds its bytes to the parser and calls everything a reader of the parsed
result would call. The only outcome allowed on bad input is the format's own error (a
``KetchError``); ``attempt`` swallows those, and anything else escapes to the fuzzer as
a crash. A target must also end: the fuzzer's per-input timeout catches a hang.

Checksums and digests would stop almost every mutated input at the first check, so the
targets re-seal what a hostile author can re-seal anyway (an author who writes a
bootstrap computes its superblock digest; a hostile layer comes with its own sha256):
the bootstrap's superblock and body digests and its size field, a blob's chunk-table
digest, a layer's sha256, and (for inputs of even length) the tar header checksums.
"""

from __future__ import annotations

import hashlib
import io
import stat
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ketch.config import config_from_bytes
from ketch.errors import KetchError
from ketch.format.blob import read_blob_table
from ketch.format.bootstrap import ROOT_INODE, Bootstrap
from ketch.format.bootstrap_verify import verify_bootstrap
from ketch.format.codecs import decoder
from ketch.format.digests import DigestAlgorithm
from ketch.format.prefetch_list import parse_prefetch_list
from ketch.format.records import BLOB_TRAILER, BLOB_TRAILER_SIZE, SUPERBLOCK_SIZE, BlobChunkEntry
from ketch.oci import tar_header as th
from ketch.oci.index import follow_to_manifest, index_with_tag
from ketch.oci.layer_stream import LayerStream
from ketch.oci.manifest import (
    Descriptor,
    Manifest,
    Platform,
    load_json,
    media_type_of,
    parse_index,
)
from ketch.oci.tar_layer import EntryKind, LayerReader
from ketch.oci.tar_sparse import ZeroRun

T = TypeVar("T")

#: steps of a walk, entries of a directory, chunks of a file a target looks at: bounds
#: of the target's own work, so that a large valid input stays quick to run
_MAX_NODES = 2000
_MAX_ENTRIES = 256
_MAX_CHUNKS = 64
#: bytes of one entry's data a tar target reads (a sparse file's holes are zeros)
_MAX_DATA = 1 << 20


def attempt(call: Callable[..., T], *args: Any) -> T | None:
    """``call(*args)``; None when it raised the format's own error."""
    try:
        return call(*args)
    except KetchError as exc:
        if "\n" in exc.message:
            raise AssertionError(f"error message is not one line: {exc.message!r}") from None
        return None


# -- bootstrap ------------------------------------------------------------------------------

_SIZE_FIELD = struct.Struct("<Q")
_SIZE_AT = 16  # bootstrap_size (docs/format.md §2.1)
_BODY_DIGEST_AT = 144
_SEALED_BYTES = 224  # the superblock digest covers the bytes before it


def seal_bootstrap(data: bytes) -> bytes:
    """``data`` with its size field, body digest and superblock digest made right."""
    if len(data) < SUPERBLOCK_SIZE:
        return data
    out = bytearray(data)
    _SIZE_FIELD.pack_into(out, _SIZE_AT, len(out))
    try:
        algo = DigestAlgorithm(out[12])
    except ValueError:
        return bytes(out)
    out[_BODY_DIGEST_AT : _BODY_DIGEST_AT + 32] = algo.digest(bytes(out[SUPERBLOCK_SIZE:]))
    out[_SEALED_BYTES:SUPERBLOCK_SIZE] = algo.digest(bytes(out[:_SEALED_BYTES]))
    return bytes(out)


def bootstrap(data: bytes) -> None:
    """Open, verify, walk (lookup of every name met), read chunk lists, xattrs, links."""
    bs = attempt(Bootstrap, seal_bootstrap(data))
    if bs is None:
        return
    problems = verify_bootstrap(bs)
    if any("\n" in problem for problem in problems):
        raise AssertionError(f"a problem is not one line: {problems!r}")
    attempt(bs.prefetch)
    attempt(bs.blobs)
    attempt(lambda: [chunk for _, chunk in zip(range(_MAX_CHUNKS), bs.chunks(), strict=False)])
    attempt(bs.resolve, "/")
    attempt(bs.resolve, b"/a/../b/./c")
    seen = {ROOT_INODE}
    pending = [ROOT_INODE]
    while pending and len(seen) < _MAX_NODES:
        index = pending.pop()
        record = attempt(bs.inode, index)
        if record is None:
            continue
        attempt(bs.xattrs, index)
        if stat.S_ISDIR(record.mode):
            entries = attempt(lambda i=index: list(_first(bs.children(i), _MAX_ENTRIES)))
            for name, child in entries or []:
                attempt(bs.lookup, index, name)
                attempt(bs.lookup, index, name + b"\0")
                if child not in seen:
                    seen.add(child)
                    pending.append(child)
            attempt(bs.lookup, index, b"")
        elif stat.S_ISREG(record.mode):
            attempt(bs.file_chunkrefs, index)
            for offset, size in ((0, record.size), (record.size // 2, 1), (record.size, 4096)):
                attempt(bs.chunks_for_range, index, offset, size)
        elif stat.S_ISLNK(record.mode):
            attempt(bs.symlink_target, index)
    bs.close()


def _first(items: Iterator[T], count: int) -> Iterator[T]:
    for _, item in zip(range(count), items, strict=False):
        yield item


# -- blob -----------------------------------------------------------------------------------


def seal_blob(data: bytes) -> bytes:
    """``data`` with its trailer's chunk-table digest made right, when the trailer says
    where a table inside ``data`` is."""
    if len(data) < BLOB_TRAILER_SIZE:
        return data
    trailer = len(data) - BLOB_TRAILER_SIZE
    fields = BLOB_TRAILER.unpack_from(data, trailer)
    algo_id, count, table_offset = fields[2], fields[3], fields[4]
    end = table_offset + count * BlobChunkEntry.size_of
    try:
        algo = DigestAlgorithm(algo_id)
    except ValueError:
        return data
    if end > trailer:
        return data
    out = bytearray(data)
    out[trailer + 24 : trailer + 56] = algo.digest(data[table_offset:end])
    return bytes(out)


def blob(data: bytes) -> None:
    """A blob's trailer and chunk table, then each chunk decompressed as a reader would."""
    data = seal_blob(data)
    table = attempt(
        read_blob_table, "sha256:fuzz", len(data), lambda offset, n: data[offset : offset + n]
    )
    if table is None:
        return
    algo, entries = table
    for entry in entries[:_MAX_CHUNKS]:
        compressed = data[entry.compressed_offset : entry.compressed_offset + entry.compressed_size]
        codec = attempt(decoder, entry.codec)
        if codec is not None:
            chunk = attempt(codec.decompress, compressed, entry.uncompressed_size)
            if chunk is not None:
                algo.digest(chunk)


# -- tar ------------------------------------------------------------------------------------


def fix_tar_checksums(data: bytes) -> bytes:
    """Rewrite the checksum of each block the reader would take for a header, following
    the size fields from the first block on."""
    out = bytearray(data)
    pos = 0
    while pos + th.BLOCK_SIZE <= len(out):
        block = out[pos : pos + th.BLOCK_SIZE]
        if block == th.ZERO_BLOCK:
            break
        out[pos + 148 : pos + 156] = b" " * 8
        out[pos + 148 : pos + 156] = b"%06o\0 " % (sum(out[pos : pos + th.BLOCK_SIZE]) & 0o777777)
        try:
            size = th.parse_number(bytes(block[124:136]))
        except th.HeaderError:
            size = 0
        if bytes(block[156:157]) in (th.HARDLINK, th.SYMLINK, th.CHAR, th.BLOCK, th.DIRECTORY):
            size = 0
        pos += th.BLOCK_SIZE + max(size, 0) + (-max(size, 0) % th.BLOCK_SIZE)
    return bytes(out)


def _read_layer(reader: LayerReader) -> None:
    """Every entry, and every file's data up to ``_MAX_DATA`` bytes."""
    for entry in reader.entries():
        if entry.kind is EntryKind.FILE:
            read = 0
            for block in reader.read_data(65536):
                read += block.size if isinstance(block, ZeroRun) else len(block)
                if read >= _MAX_DATA:
                    break
        _ = entry.display


def tar(data: bytes) -> None:
    """An uncompressed tar layer: headers, pax records, long names, sparse maps, data."""
    if len(data) % 2 == 0:
        data = fix_tar_checksums(data)
    attempt(_read_layer, LayerReader(io.BytesIO(data), "sha256:fuzz"))


_COMPRESSIONS = ("gzip", "zstd", "none")


def layer_stream(data: bytes) -> None:
    """A layer blob: byte 0 picks the compression (gzip, zstd, none), byte 1's low bit
    whether the stream is told the blob's size; the rest is the blob, with its own sha256
    as the digest. Its tar is read, then the stream to its end."""
    if len(data) < 2:
        return
    compression = _COMPRESSIONS[data[0] % len(_COMPRESSIONS)]
    raw = data[2:]
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    size = len(raw) if data[1] & 1 else None
    stream = LayerStream(io.BytesIO(raw), compression, digest, size=size)
    try:
        attempt(_read_layer, LayerReader(stream, digest))  # type: ignore[arg-type]
        attempt(stream.finish)
    finally:
        stream.close()


# -- manifests and indexes ------------------------------------------------------------------

_DESCRIPTOR = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "0" * 64, 2)


def manifest(data: bytes) -> None:
    """A manifest, an index or a layout's index.json, as each reader of one reads it."""
    attempt(media_type_of, data, "fuzz")
    attempt(Manifest.parse, data, "fuzz")
    parsed = attempt(Manifest.parse, data, "fuzz", "application/vnd.oci.image.manifest.v1+json")
    if parsed is not None:
        parsed.to_bytes()
    descriptors = attempt(parse_index, data, "fuzz")
    for descriptor in descriptors or []:
        descriptor.to_json()
    doc = attempt(load_json, data, "fuzz")
    if doc is not None:
        attempt(index_with_tag, doc, "latest", _DESCRIPTOR)
    for platform in (None, Platform("linux", "arm64", "v8")):
        attempt(
            follow_to_manifest,
            lambda _digest: data,
            Descriptor("", "sha256:" + "0" * 64, len(data)),
            platform,
            "fuzz",
        )
    attempt(Platform.parse, data[:64].decode("utf-8", "replace"))


# -- configuration and lists ----------------------------------------------------------------


def config(data: bytes) -> None:
    """The TOML configuration file, as ``load_config`` reads it."""
    attempt(config_from_bytes, data, "fuzz.toml")


def prefetch_list(data: bytes) -> None:
    """A prefetch list file (``--prefetch-list``, ``--prefetch-file``)."""
    paths = attempt(parse_prefetch_list, data)
    for path in paths or []:
        if not path or path != path.strip(" \t\r\f\v") or "\n" in path or path[0] == "#":
            raise AssertionError(f"parsed entry {path!r} is blank, padded or a comment")
        path.encode("utf-8", "surrogateescape")


def selftest(data: bytes) -> None:
    """Fails as a parser bug would, on inputs starting with b"crash" (tests the harness)."""
    if data.startswith(b"crash"):
        raise ValueError("not the format's own error")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "bootstrap": bootstrap,
    "blob": blob,
    "tar": tar,
    "layer_stream": layer_stream,
    "manifest": manifest,
    "config": config,
    "prefetch_list": prefetch_list,
    "selftest": selftest,
}
