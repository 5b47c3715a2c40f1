"""Where the public API's reads go: the chunk cache it chooses, and the reader over it.

The one place the API builds on storage's reader constructors (``ChunkReader``,
``CachedChunkReader``, ``ChunkCache``). The cache is the node-wide one when it is
configured and this user can write it, else a per-user one (``$XDG_CACHE_HOME/ketch``,
else ``~/.cache/ketch``), else none: chunks are then held in memory only. A cache entry
is verified on every read, so a cache shared with other users is input like any other.

Reads fetch exactly the chunks they need (no read-ahead past the file in the blob, as the
mount daemon does): a program reading one file of an image fetches that file's chunks.
A file read in order has its next chunks prefetched (``ImageFS``), within the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ketch.config import ImageOptions, load_config
from ketch.errors import local_file_error
from ketch.format.digests import DigestAlgorithm
from ketch.storage.cached_reader import CachedChunkReader
from ketch.storage.chunk_cache import ChunkCache
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.store import ImageStore

_MODE = 0o700  # chunk digests name what a user reads: others must not list them


@dataclass(frozen=True, slots=True)
class CacheChoice:
    """The cache directory chosen (None: no cache) and its capacity in bytes."""

    root: Path | None
    capacity: int


def choose_cache(options: ImageOptions) -> CacheChoice:
    """The cache the options name, or the first usable of the node's and the user's."""
    if not options.cache:
        return CacheChoice(None, 0)
    if options.cache_dir is not None:
        return CacheChoice(options.cache_dir, options.cache_size)
    node = load_config().cache
    candidates = [Path(node.dir), _user_cache_dir()]
    for root in candidates:
        if _usable(root):
            return CacheChoice(root, options.cache_size)
    return CacheChoice(None, 0)


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ketch"


def _usable(root: Path) -> bool:
    """``root`` exists (or can be made) and this user can write and search it."""
    try:
        root.mkdir(mode=_MODE, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK | os.X_OK)


def chunk_source(
    store: ImageStore, algo: DigestAlgorithm, choice: CacheChoice
) -> CachedChunkReader:
    """A thread-safe, verifying chunk source over ``store`` with the chosen cache."""
    cache: ChunkCache | None = None
    if choice.root is not None:
        try:
            cache = ChunkCache(
                choice.root / "chunks", choice.capacity, algo, scan_in_background=True
            )
        except OSError as exc:
            raise local_file_error(exc, choice.root, "cannot use as the chunk cache") from None
    return CachedChunkReader(ChunkReader(store, algo), cache)
