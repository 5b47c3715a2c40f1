"""Write an image's tree to a local directory, as ``umoci unpack`` would.

Everything is created relative to open directory descriptors, with O_NOFOLLOW and
O_EXCL: no symlink is ever followed, so nothing lands outside the destination whatever
the image says. The tree is built in a temporary sibling and renamed into place at the
end, so an interrupted unpack leaves no half tree under the destination's name.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import IntegrityError, StorageError, UsageError
from ketch.format.bootstrap_verify import verify_bootstrap
from ketch.fs.image_fs import ROOT_INO, Attr, ImageFS

_WRITE_BLOCK = 4 << 20
_ZEROS = bytes(_WRITE_BLOCK)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@dataclass(slots=True)
class _Directory:
    """A directory being written: where it is, and its entries still to write."""

    ino: int
    rel: bytes
    attr: Attr
    entries: Iterator[tuple[bytes, int]]
    identity: tuple[int, int]  # st_dev, st_ino of the directory made


class _Unpacker:
    """Depth-first with a stack of its own, not Python's (a tree may be deeper than the
    recursion limit), and one open directory at a time (or as deep a tree would need as
    many descriptors): a walk goes down by name and back up by "..", checked to be the
    directory it left."""

    def __init__(self, fs: ImageFS, on_bytes: Callable[[int], None]) -> None:
        self.fs = fs
        self.on_bytes = on_bytes
        self.first_path: dict[int, bytes] = {}
        self.files = 0
        self._zero_size: dict[int, int] = {}  # chunk index: its size if all zeros, else 0
        self._zero_digests: dict[int, bytes] = {}  # by size: the digest of that many zeros

    def run(self, root_fd: int) -> None:
        self.root_fd = root_fd
        fs = self.fs
        fd = os.dup(root_fd)  # the directory on top of the stack
        try:
            stack = [
                _Directory(ROOT_INO, b"", fs.getattr(ROOT_INO), fs.readdir(ROOT_INO), _identity(fd))
            ]
            while stack:
                top = stack[-1]
                item = next(top.entries, None)
                if item is None:
                    # Up to the parent first: this directory's mode may forbid entering it.
                    stack.pop()
                    parent_fd = self._parent(fd, stack[-1]) if stack else -1
                    self._apply_attrs(top.attr, fd, None, top.ino)
                    os.close(fd)
                    fd = parent_fd
                    continue
                name, child = item
                below = self._entry(top, fd, name, child)
                if below is not None:
                    os.close(fd)
                    fd = below[0]
                    stack.append(below[1])
        finally:
            if fd >= 0:
                os.close(fd)

    def _parent(self, fd: int, parent: _Directory) -> int:
        parent_fd = os.open(b"..", _DIR_FLAGS, dir_fd=fd)
        if _identity(parent_fd) != parent.identity:
            os.close(parent_fd)
            raise StorageError(
                f"{parent.rel.decode(errors='replace') or '/'}: moved while being unpacked"
            )
        return parent_fd

    def _entry(
        self, top: _Directory, dir_fd: int, name: bytes, child: int
    ) -> tuple[int, _Directory] | None:
        """Write one entry of ``top``; a directory is made and returned, open, to be
        filled next."""
        rel = top.rel
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise IntegrityError(
                f"directory {rel.decode(errors='replace') or '/'}: bad entry name {name!r}"
            )
        child_rel = rel + b"/" + name if rel else name
        attr = self.fs.getattr(child)
        if child in self.first_path and not stat.S_ISDIR(attr.mode):
            os.link(
                self.first_path[child],
                name,
                src_dir_fd=self.root_fd,
                dst_dir_fd=dir_fd,
                follow_symlinks=False,
            )
            return None
        self.first_path[child] = child_rel
        kind = stat.S_IFMT(attr.mode)
        if kind == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            return fd, _Directory(child, child_rel, attr, self.fs.readdir(child), _identity(fd))
        if kind == stat.S_IFREG:
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
            )
            try:
                self._write_contents(child, attr.size, fd)
                self._apply_attrs(attr, fd, None, child)
            finally:
                os.close(fd)
            self.files += 1
        elif kind == stat.S_IFLNK:
            os.symlink(self.fs.readlink(child), name, dir_fd=dir_fd)
            self._apply_attrs(attr, dir_fd, name, child)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK):
            os.mknod(name, kind | 0o600, attr.rdev, dir_fd=dir_fd)
            self._apply_attrs(attr, dir_fd, name, child)
        else:
            raise IntegrityError(
                f"{child_rel.decode(errors='replace')}: unknown file type {oct(attr.mode)}"
            )
        return None

    def _write_contents(self, ino: int, size: int, fd: int) -> None:
        """The file's bytes into ``fd``; zeros become holes (the file is as sparse as its
        zeros allow, as umoci leaves a sparse file from a layer). A chunk whose digest is
        that of zeros is a hole without being fetched (its digest says what it holds):
        a file of a terabyte of holes costs its chunk records."""
        for start, end in self._data_spans(ino, size):
            os.lseek(fd, start, os.SEEK_SET)
            offset = start
            while offset < end:
                data = self.fs.read(ino, offset, min(_WRITE_BLOCK, end - offset))
                if not data:
                    raise IntegrityError(f"inode {ino}: ended at {offset} of {size} bytes")
                if _ZEROS.startswith(data):  # all zeros (a memcmp, no copy)
                    os.lseek(fd, len(data), os.SEEK_CUR)
                else:
                    with memoryview(data) as view:
                        written = 0
                        while written < len(view):
                            written += os.write(fd, view[written:])
                offset += len(data)
                self.on_bytes(len(data))
        os.ftruncate(fd, size)  # a file that ends in a hole still has its size

    def _data_spans(self, ino: int, size: int) -> Iterator[tuple[int, int]]:
        """``[start, end)`` stretches of the file not made of zero chunks, in order (the
        chunkrefs tile the file: ``verify_bootstrap`` checked it)."""
        bs = self.fs.bootstrap
        zero_size = self._zero_size
        start = 0
        for file_offset, chunk_index in bs.file_chunk_table(ino - 1):
            zeros = zero_size.get(chunk_index)
            if zeros is None:
                chunk = bs.chunk(chunk_index)
                is_zero = chunk.digest == self._zero_digest(chunk.uncompressed_size)
                zeros = zero_size[chunk_index] = chunk.uncompressed_size if is_zero else 0
            if zeros:
                if file_offset > start:
                    yield start, file_offset
                start = file_offset + zeros
                self.on_bytes(zeros)
        if size > start:
            yield start, size

    def _zero_digest(self, size: int) -> bytes:
        digest = self._zero_digests.get(size)
        if digest is None:
            digest = self._zero_digests[size] = self.fs.bootstrap.digest_algorithm.digest(
                bytes(size)
            )
        return digest

    def _apply_attrs(self, attr: Attr, fd: int, name: bytes | None, ino: int) -> None:
        """Owner, then mode (chown clears set-id bits), xattrs, then mtime last.

        With ``name`` the node is addressed as ``name`` in directory ``fd`` and never
        followed (symlinks, devices, fifos); otherwise ``fd`` is the node itself.
        """
        mtime = (attr.mtime_ns, attr.mtime_ns)
        is_link = stat.S_ISLNK(attr.mode)
        if name is None:
            os.fchown(fd, attr.uid, attr.gid)
            os.fchmod(fd, stat.S_IMODE(attr.mode))
            for key, value in self.fs.xattrs(ino).items():
                os.setxattr(fd, key, value)
            os.utime(fd, ns=mtime)
            return
        os.chown(name, attr.uid, attr.gid, dir_fd=fd, follow_symlinks=False)
        if not is_link:
            # Not a symlink (we just made it with mknod), so following is harmless.
            os.chmod(name, stat.S_IMODE(attr.mode), dir_fd=fd)
        xattrs = self.fs.xattrs(ino)
        if xattrs:
            target = f"/proc/self/fd/{fd}/".encode() + name
            for key, value in xattrs.items():
                os.setxattr(target, key, value, follow_symlinks=False)
        os.utime(name, ns=mtime, dir_fd=fd, follow_symlinks=False)


def unpack(fs: ImageFS, dest: Path, on_bytes: Callable[[int], None] = lambda _: None) -> int:
    """Unpack into ``dest`` (absent, or an empty directory); the number of files written."""
    if dest.exists() and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise UsageError(f"{dest}: destination exists and is not an empty directory")
    parent = dest.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"{dest}: parent directory {parent} does not exist")
    # The whole tree is about to be walked anyway: check it whole first (a hostile
    # bootstrap could loop a directory into its own ancestor, or name a file twice), so
    # that such an image gets a plain integrity error before anything is written.
    problems = verify_bootstrap(fs.bootstrap)
    if problems:
        more = f" (and {len(problems) - 1} more; ketch check lists them)" if problems[1:] else ""
        raise IntegrityError(f"{problems[0]}{more}")
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.ketch-", dir=parent))
    try:
        fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            worker = _Unpacker(fs, on_bytes)
            worker.run(fd)
        finally:
            os.close(fd)
        if dest.exists():
            dest.rmdir()
        os.rename(staging, dest)
    except OSError as exc:
        _remove(staging)
        if exc.errno == errno.ENOSPC:
            raise StorageError(f"{dest}: no space left while unpacking") from None
        raise StorageError(f"{dest}: unpack failed: {exc}") from None
    except BaseException:
        _remove(staging)
        raise
    return worker.files


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _remove(path: Path) -> None:
    """Remove the staging tree as the unpack walks it: any depth, one directory open at
    a time, never following a symlink."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    # The directories on the way down: name, identity, subdirectories still to remove.
    stack = [(b"", _identity(fd), _clear(fd))]
    try:
        while True:
            name, _, subdirs = stack[-1]
            if subdirs:
                child = subdirs.pop()
                below = os.open(child, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = below
                stack.append((child, _identity(fd), _clear(fd)))
                continue
            stack.pop()
            if not stack:
                break
            parent_fd = os.open(b"..", _DIR_FLAGS, dir_fd=fd)
            if _identity(parent_fd) != stack[-1][1]:
                os.close(parent_fd)
                raise StorageError(f"{path}: moved while being removed")
            os.close(fd)
            fd = parent_fd
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    path.rmdir()


def _clear(fd: int) -> list[bytes]:
    """Unlink every entry of directory ``fd`` but its subdirectories; their names."""
    subdirs: list[bytes] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            name = os.fsencode(entry.name)
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(name)
            else:
                os.unlink(name, dir_fd=fd)
    return subdirs
