"""``KetchFileSystem``: an image as a read-only fsspec filesystem, protocol ``ketch``.

Registered through the ``fsspec.specs`` entry point, so that anything speaking fsspec
(pandas, PyTorch and Hugging Face loaders, dask) reads files out of an image without a
mount or root::

    fs = fsspec.filesystem("ketch", image="docker://HOST/REPO:TAG")
    fsspec.open("ketch:///etc/os-release", image="docker://HOST/REPO:TAG")
    fsspec.open("ketch://docker://HOST/REPO:TAG//etc/os-release")

In the last, self-contained form the image reference follows ``ketch://`` and the first
``//`` after the reference's own transport (``docker://``, ``oci:``, ``s3://``) starts the
path in the image. fsspec's ``::`` chaining cannot carry the reference (``docker`` is no
fsspec protocol), so a reference that contains ``//`` itself goes in ``image=``.

Paths are absolute (``/etc/os-release``; a relative one is taken from the root). A
missing path is ``FileNotFoundError``; a directory opened is ``IsADirectoryError``;
symlinks are followed inside the image. The opened image is shared by every instance of
the same reference and options in a process (fsspec makes an instance per thread), for
the last ``SHARED_IMAGES`` references asked for.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections import OrderedDict
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.utils import stringify_path

from ketch.api.image import Image, ImageStat, open_image
from ketch.config import ImageOptions
from ketch.errors import PathNotFoundError

PROTOCOL = "ketch"
_TRANSPORTS = ("docker://", "oci:", "s3://")

#: opened images kept for new instances, least recently asked for dropped first (an
#: instance keeps its own image open however many others are opened after it)
SHARED_IMAGES = 8

_lock = threading.Lock()
_opened: OrderedDict[tuple[int, str, ImageOptions | None], Image] = OrderedDict()


def split_url(url: str) -> tuple[str | None, str]:
    """``(reference, path)`` of a ``ketch://`` URL (the protocol removed or not);
    ``reference`` is None when the URL names only a path."""
    text = url[len(PROTOCOL) + 3 :] if url.startswith(PROTOCOL + "://") else url
    transport = next((t for t in _TRANSPORTS if text.startswith(t)), None)
    if transport is None:
        return None, text
    end = text.find("//", len(transport))
    if end < 0:
        return text, "/"
    return text[:end], text[end + 1 :]


def _shared_image(reference: str, options: ImageOptions | None) -> Image:
    """One opened image per reference and options in this process (opened again after
    a fork: connections are not shared across processes)."""
    key = (os.getpid(), reference, options)
    with _lock:
        image = _opened.get(key)
        if image is None:
            image = _opened[key] = open_image(reference, options)
        _opened.move_to_end(key)
        while len(_opened) > SHARED_IMAGES:
            _opened.popitem(last=False)
        return image


class KetchFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """A Ketch image, read-only; ``image`` is its reference, ``options`` an
    ``ImageOptions`` (store, cache)."""

    protocol = PROTOCOL
    root_marker = "/"

    def __init__(
        self, image: str, options: ImageOptions | None = None, **storage_options: Any
    ) -> None:
        super().__init__(image=image, options=options, **storage_options)
        self.image = _shared_image(image, options)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(stringify_path(path))
        if text.startswith(PROTOCOL + "://"):
            text = split_url(text)[1]
        elif text.startswith(PROTOCOL + "::"):
            text = text[len(PROTOCOL) + 2 :]
        return "/" + text.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        reference, _ = split_url(path)
        return {} if reference is None else {"image": reference}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        own = self.image.stat(path, follow_symlinks=False)
        if not own.is_symlink():
            return _info(path, own)
        try:
            target = self.image.stat(path)
        except PathNotFoundError:  # a dangling link: itself
            details = _info(path, own)
            details["type"] = "other"
        else:
            details = _info(path, target)
        details["islink"] = True
        details["destination"] = self.image.readlink(path)
        return details

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        details = self.info(path)
        if details["type"] != "directory":
            entries = [details]
        else:
            base = path.rstrip("/")
            entries = [self.info(f"{base}/{name}") for name in self.image.listdir(path)]
        return entries if detail else [entry["name"] for entry in entries]

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        path = self._strip_protocol(path)
        with self.image.open(path) as f:
            size = self.image.stat(path).st_size
            first = 0 if start is None else (start if start >= 0 else max(size + start, 0))
            last = size if end is None else (end if end >= 0 else max(size + end, 0))
            if last <= first:
                return b""
            f.seek(first)
            return f.read(last - first)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> io.BufferedReader:
        if mode != "rb":
            raise NotImplementedError(f"ketch: {path}: images are read-only (mode {mode!r})")
        return self.image.open(self._strip_protocol(path))


def _info(path: str, found: ImageStat) -> dict[str, Any]:
    kind = found.type if found.type in ("file", "directory") else "other"
    return {
        "name": path,
        "size": found.st_size,
        "type": kind,
        "mode": stat.S_IMODE(found.st_mode) | stat.S_IFMT(found.st_mode),
        "uid": found.st_uid,
        "gid": found.st_gid,
        "nlink": found.st_nlink,
        "ino": found.st_ino,
        "mtime": found.st_mtime,
        "islink": False,
    }


__all__ = ["KetchFileSystem", "split_url"]
