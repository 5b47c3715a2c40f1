"""``open_image`` and ``Image``: an image's tree and files, read lazily and verified.

Paths are absolute or root-relative, ``str`` (UTF-8, undecodable bytes as surrogate
escapes, as ``os`` does) or ``bytes``. Symlinks are followed inside the image, as a
chroot would: an absolute target starts at the image's root and ``..`` stops there, so
no path leaves the image (at most 40 links per path, as Linux allows).
"""

from __future__ import annotations

import errno
import io
import stat
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ketch.api.chunk_source import choose_cache, chunk_source
from ketch.api.image_file import ImageFile
from ketch.config import ImageOptions
from ketch.errors import PathIsADirectoryError, PathNotFoundError, local_file_error
from ketch.format.bootstrap import ROOT_INODE
from ketch.fs.image_fs import ImageFS
from ketch.fs.unpack import unpack
from ketch.image.check import CheckReport, check_image
from ketch.image.inspect import entry_summary, image_summary
from ketch.image.ketch_image import KetchImage, open_ketch_image
from ketch.storage.cached_reader import CachedChunkReader
from ketch.storage.open import open_store
from ketch.storage.windowed_reader import WindowedChunkReader

MAX_SYMLINKS = 40  # links followed in one path, as Linux's path walk allows
BUFFER_SIZE = 256 << 10  # of the io.BufferedReader ``Image.open`` returns

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True, slots=True)
class UnpackReport:
    """What ``Image.unpack`` wrote, and what it fetched from the store to do it."""

    files: int
    fetched_bytes: int


@dataclass(frozen=True, slots=True)
class ImageStat:
    """What ``Image.stat`` says of a path: ``os.stat_result``'s fields, by their names."""

    path: str
    st_mode: int
    st_ino: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_rdev: int

    @property
    def type(self) -> str:
        """file, directory, symlink, char, block, fifo or socket."""
        return _TYPES.get(stat.S_IFMT(self.st_mode), "other")

    @property
    def st_mtime(self) -> float:
        return self.st_mtime_ns / 1e9

    def is_file(self) -> bool:
        return stat.S_ISREG(self.st_mode)

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st_mode)

    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.st_mode)


class Image:
    """An opened Ketch image: its tree from the bootstrap, its files' bytes fetched on
    first read. Thread-safe; ``close`` (or ``with``) releases the store's connections."""

    def __init__(
        self,
        reference: str,
        image: KetchImage,
        reader: CachedChunkReader,
        cache_dir: Path | None = None,
    ) -> None:
        self.reference = reference
        #: the chunk cache this image reads through (None: none, chunks in memory only)
        self.cache_dir = cache_dir
        self._image = image
        self._reader = reader
        self._fs = ImageFS(image.bootstrap, reader)

    # -- what it is ---------------------------------------------------------------------

    @property
    def manifest_digest(self) -> str:
        return self._image.descriptor.digest

    @property
    def root_digest(self) -> str:
        """The Merkle digest of the whole tree, ``ALGO:HEX``."""
        bootstrap = self._image.bootstrap
        return f"{bootstrap.digest_algorithm.label}:{bootstrap.root_digest.hex()}"

    @property
    def name(self) -> str:
        """The image as its store names it (``ketch inspect`` prints this)."""
        return self._image.name

    @property
    def fetched_bytes(self) -> int:
        """Compressed bytes read from the store for chunks so far (cache hits cost none)."""
        return self._reader.stats().backend_bytes

    @property
    def fetches(self) -> int:
        """Range reads issued to the store so far."""
        return self._reader.stats().fetches

    # -- the tree -----------------------------------------------------------------------

    def stat(self, path: str | bytes, *, follow_symlinks: bool = True) -> ImageStat:
        """The path's attributes; with ``follow_symlinks=False``, a final symlink's own."""
        ino = self._lookup(path, follow=follow_symlinks)
        attr = self._fs.getattr(ino)
        return ImageStat(
            _text(path),
            attr.mode,
            attr.ino,
            attr.nlink,
            attr.uid,
            attr.gid,
            attr.size,
            attr.mtime_ns,
            attr.rdev,
        )

    def exists(self, path: str | bytes) -> bool:
        try:
            self._lookup(path, follow=True)
        except PathNotFoundError:
            return False
        return True

    def listdir(self, path: str | bytes = "/") -> list[str]:
        """The names in a directory, sorted by their bytes."""
        ino = self._directory(path)
        return [_text(name) for name, _ in self._fs.readdir(ino)]

    def readlink(self, path: str | bytes) -> str:
        ino = self._lookup(path, follow=False)
        if not stat.S_ISLNK(self._fs.getattr(ino).mode):
            raise PathNotFoundError(
                f"{self.reference}: {_text(path)}: not a symlink", _text(path), errno.EINVAL
            )
        return _text(self._fs.readlink(ino))

    def walk(self, top: str | bytes = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """``os.walk`` of the image, top down: ``(dirpath, dirnames, filenames)``, where
        ``filenames`` are all entries that are not directories (symlinks included, never
        followed). Removing names from ``dirnames`` prunes the walk. Any depth."""
        stack = ["/" + _text(top).strip("/")]
        inos = [self._directory(top)]
        while stack:
            dirpath, ino = stack.pop(), inos.pop()
            dirnames: list[str] = []
            filenames: list[str] = []
            children: dict[str, int] = {}
            for raw, child in self._fs.readdir(ino):
                name = _text(raw)
                if stat.S_ISDIR(self._fs.getattr(child).mode):
                    dirnames.append(name)
                    children[name] = child
                else:
                    filenames.append(name)
            yield dirpath, dirnames, filenames
            for name in reversed(dirnames):
                if name in children:
                    stack.append(f"{dirpath.rstrip('/')}/{name}")
                    inos.append(children[name])

    # -- files --------------------------------------------------------------------------

    def open(self, path: str | bytes) -> io.BufferedReader:
        """A regular file (symlinks followed) as a binary file object; its chunks are
        fetched as they are read, each verified first."""
        ino = self._lookup(path, follow=True)
        attr = self._fs.getattr(ino)
        name = _text(path)
        if stat.S_ISDIR(attr.mode):
            raise PathIsADirectoryError(f"{self.reference}: {name}: is a directory", name)
        if not stat.S_ISREG(attr.mode):
            raise PathNotFoundError(
                f"{self.reference}: {name}: not a regular file", name, errno.ENXIO
            )
        return io.BufferedReader(ImageFile(self._fs, ino, attr.size, name), BUFFER_SIZE)

    def read_bytes(self, path: str | bytes) -> bytes:
        with self.open(path) as f:
            return f.read()

    # -- the whole image -----------------------------------------------------------------

    def inspect(self, path: str | None = None) -> dict[str, Any]:
        """``ketch inspect --json``: what the image holds, from its bootstrap alone; with
        ``path``, that entry (a final symlink not followed), its chunks included."""
        if path is None:
            return image_summary(self._image)
        return entry_summary(self._image.bootstrap, path)

    def check(self, on_bytes: Callable[[int], None] | None = None) -> CheckReport:
        """``ketch check``: the bootstrap and every chunk of every blob read and verified
        (``on_bytes`` is told of the bytes as they are checked)."""
        if on_bytes is None:
            return check_image(self._image)
        return check_image(self._image, on_bytes)

    def unpack(
        self, dest: str | Path, on_bytes: Callable[[int], None] | None = None
    ) -> UnpackReport:
        """``ketch unpack``: write the tree to the directory ``dest`` (created; it must be
        empty if it exists), as root would unpack it: owners, modes, xattrs, devices.
        Blobs are read in large verified windows, not through the chunk cache."""
        reader = WindowedChunkReader(self._image.store, self._image.bootstrap.digest_algorithm)
        fs = ImageFS(self._image.bootstrap, reader)
        try:
            files = unpack(fs, Path(dest), on_bytes or (lambda n: None))
        except OSError as exc:
            raise local_file_error(exc, dest, "cannot unpack there") from None
        return UnpackReport(files, reader.backend_bytes)

    # -- life ---------------------------------------------------------------------------

    def close(self) -> None:
        close = getattr(self._image.store, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Image:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ketch.Image {self.reference} {self.manifest_digest}>"

    # -- paths --------------------------------------------------------------------------

    def _directory(self, path: str | bytes) -> int:
        ino = self._lookup(path, follow=True)
        if not stat.S_ISDIR(self._fs.getattr(ino).mode):
            name = _text(path)
            raise PathNotFoundError(
                f"{self.reference}: {name}: not a directory", name, errno.ENOTDIR
            )
        return ino

    def _lookup(self, path: str | bytes, *, follow: bool) -> int:
        """The inode number ``path`` names, symlinks followed inside the image (the last
        one only if ``follow``)."""
        raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
        parts = deque(raw.split(b"/"))
        walked = [ROOT_INODE + 1]  # the directories from the root to here (for "..")
        links = 0
        while parts:
            part = parts.popleft()
            if part in (b"", b"."):
                continue
            if part == b"..":
                if len(walked) > 1:
                    walked.pop()
                continue
            here = walked[-1]
            if not stat.S_ISDIR(self._fs.getattr(here).mode):
                raise self._missing(raw, errno.ENOTDIR, "not a directory")
            child = self._fs.lookup(here, part)
            if child is None:
                raise self._missing(raw, errno.ENOENT, "no such file or directory")
            if stat.S_ISLNK(self._fs.getattr(child).mode) and (follow or parts):
                links += 1
                if links > MAX_SYMLINKS:
                    raise self._missing(raw, errno.ELOOP, "too many levels of symbolic links")
                target = self._fs.readlink(child)
                if target.startswith(b"/"):
                    del walked[1:]
                parts.extendleft(reversed(target.split(b"/")))
                continue
            walked.append(child)
        return walked[-1]

    def _missing(self, raw: bytes, code: int, why: str) -> PathNotFoundError:
        name = _text(raw)
        return PathNotFoundError(f"{self.reference}: {name}: {why}", name, code)


def _text(path: str | bytes) -> str:
    return path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path


def open_image(reference: str, options: ImageOptions | None = None) -> Image:
    """Open the Ketch image ``reference`` names (``docker://HOST/REPO:TAG``,
    ``oci:DIR:TAG``, ``s3://BUCKET/PREFIX:TAG``): its manifest and bootstrap are read
    now, file data on first read."""
    options = options or ImageOptions()
    store, tag = open_store(reference, options.store)
    try:
        choice = choose_cache(options)
        bootstraps = None if choice.root is None else choice.root / "bootstraps"
        try:
            image = open_ketch_image(store, tag, cache_dir=bootstraps)
        except OSError as exc:
            raise local_file_error(exc, bootstraps, "cannot use as the bootstrap cache") from None
        reader = chunk_source(store, image.bootstrap.digest_algorithm, choice)
    except BaseException:
        close = getattr(store, "close", None)
        if callable(close):
            close()
        raise
    return Image(reference, image, reader, choice.root)
