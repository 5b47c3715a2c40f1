"""``ketch inspect``: what an image holds, from its bootstrap alone (no blob is read)."""

from __future__ import annotations

import stat
from typing import Any

from ketch.format.bootstrap import Bootstrap
from ketch.image.ketch_image import KetchImage
from ketch.image.layout import source_manifest

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def image_summary(image: KetchImage) -> dict[str, Any]:
    bs = image.bootstrap
    kinds: dict[str, int] = {}
    file_bytes = 0
    chunk_refs = 0
    for index in range(bs.inode_count):
        record = bs.inode(index)
        kind = _KINDS.get(stat.S_IFMT(record.mode), "other")
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "file":
            file_bytes += record.size
            chunk_refs += record.data_count
    blobs = bs.blobs()
    unique_bytes = sum(c.uncompressed_size for c in bs.chunks())
    return {
        "reference": image.name,
        "manifest_digest": image.descriptor.digest,
        "root_digest": f"{bs.digest_algorithm.label}:{bs.root_digest.hex()}",
        "bootstrap": {"digest": image.bootstrap_layer.digest, "size": image.bootstrap_layer.size},
        "digest_algorithm": bs.digest_algorithm.label,
        "chunker": "cdc" if bs.cdc else "fixed",
        "chunk_size": bs.chunk_size,
        "blobs": [{"digest": b.oci_digest, "size": b.size, "chunks": b.chunk_count} for b in blobs],
        "inodes": bs.inode_count,
        "files": kinds.get("file", 0),
        "directories": kinds.get("dir", 0),
        "symlinks": kinds.get("symlink", 0),
        "other": sum(v for k, v in kinds.items() if k not in ("file", "dir", "symlink")),
        "bytes": file_bytes,
        "chunks": chunk_refs,
        "unique_chunks": bs.superblock.chunk_count,
        "unique_bytes": unique_bytes,
        "stored_bytes": sum(b.size for b in blobs),
        "source_manifest": source_manifest(image.manifest),
        "prefetch_files": bs.superblock.prefetch_count,
    }


def entry_summary(bs: Bootstrap, path: str) -> dict[str, Any]:
    index = bs.resolve(path)
    record = bs.inode(index)
    out: dict[str, Any] = {
        "path": path,
        "inode": index + 1,
        "type": _KINDS.get(stat.S_IFMT(record.mode), "other"),
        "mode": f"{stat.S_IMODE(record.mode):04o}",
        "uid": record.uid,
        "gid": record.gid,
        "nlink": record.nlink,
        "size": record.size,
        "mtime": f"{record.mtime_sec}.{record.mtime_nsec:09d}",
        "digest": f"{bs.digest_algorithm.label}:{record.digest.hex()}",
    }
    if stat.S_ISLNK(record.mode):
        out["target"] = bs.symlink_target(index).decode(errors="replace")
    if stat.S_ISCHR(record.mode) or stat.S_ISBLK(record.mode):
        out["rdev"] = record.rdev
    xattrs = bs.xattrs(index)
    if xattrs:
        out["xattrs"] = {k.decode(errors="replace"): v.hex() for k, v in xattrs.items()}
    if stat.S_ISDIR(record.mode):
        out["entries"] = record.data_count
    if stat.S_ISREG(record.mode):
        chunks = []
        for ref_index in bs.file_chunkrefs(index):
            ref = bs.chunkref(ref_index)
            chunk = bs.chunk(ref.chunk)
            chunks.append(
                {
                    "file_offset": ref.file_offset,
                    "size": chunk.uncompressed_size,
                    "digest": chunk.digest.hex(),
                    "blob": bs.blob(chunk.blob).oci_digest,
                    "compressed_offset": chunk.compressed_offset,
                    "compressed_size": chunk.compressed_size,
                    "codec": chunk.codec,
                }
            )
        out["chunks"] = chunks
    return out
