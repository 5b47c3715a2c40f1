"""The FUSE adapter's read handler: whatever the read path raises, the reader gets EIO
and the daemon one ERROR line; no exception leaves the handler (pyfuse3 would end its
main loop on one, and the whole mount with it)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyfuse3
import pytest
import trio

from ketch.daemon.access_trace import AccessTrace
from ketch.daemon.fuse_ops import KetchOperations
from ketch.daemon.metrics import Metrics
from ketch.errors import IntegrityError, StorageError
from ketch.format.records import ChunkRecord
from ketch.fs.image_fs import Attr, ImageFS
from ketch.image.ketch_image import open_ketch_image
from ketch.storage.blobs import BlobRef
from ketch.storage.oci_layout_store import OciLayoutStore
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert


class RaisingSource:
    """A chunk source whose every read raises ``error`` (a bug or a fault below)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def read(self, blob: BlobRef, chunks: Sequence[ChunkRecord]) -> list[bytes]:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        KeyError(b"\x01" * 32),  # issue 16, defect 1: what the old cached reader raised
        RuntimeError("chunk fetch ended without a result"),
        IntegrityError("blob sha256:00 chunk at 0: digest: expected 01, found 02"),
        StorageError("docker://r/x: blob sha256:00: gave up after 5 attempts"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_any_read_path_error_is_eio_and_one_error_line(
    tmp_path: Path, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    ol.write_oci_layout(src, "src", [ol.tar_bytes([ol.file("f", b"data" * 1000)])])
    convert(src, "src", tmp_path / "image")
    image = open_ketch_image(OciLayoutStore.open(tmp_path / "image"), "ketch")
    fs = ImageFS(image.bootstrap, RaisingSource(error))
    metrics = Metrics()
    ops = KetchOperations(fs, metrics, AccessTrace(fs.paths_of))
    ino = fs.resolve("/f")

    async def read() -> bytes:
        return await ops.read(ino, 0, 4096)

    caplog.set_level(logging.ERROR, logger="ketch")
    for _ in range(2):  # and again: the handler is still there
        with pytest.raises(pyfuse3.FUSEError) as raised:
            trio.run(read)
        assert raised.value.errno == errno.EIO
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("\n" not in r.getMessage() for r in errors)
    assert metrics.read_errors.value == 2


class BrokenMetadataFS(ImageFS):
    """An image view whose every metadata answer raises ``error`` (a damaged bootstrap,
    or a bug below the adapter)."""

    error: BaseException = RuntimeError("bug")

    def getattr(self, ino: int) -> Attr:
        raise self.error

    def readdir(self, ino: int) -> Iterator[tuple[bytes, int]]:
        raise self.error

    def xattrs(self, ino: int) -> dict[bytes, bytes]:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [RuntimeError("bug"), IntegrityError("inode 2: damaged")],
    ids=lambda e: type(e).__name__,
)
def test_any_metadata_error_is_eio_and_the_handlers_answer_again(
    tmp_path: Path, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    ol.write_oci_layout(src, "src", [ol.tar_bytes([ol.file("d/f", b"data")])])
    convert(src, "src", tmp_path / "image")
    image = open_ketch_image(OciLayoutStore.open(tmp_path / "image"), "ketch")
    fs = BrokenMetadataFS(image.bootstrap, RaisingSource(error))
    fs.error = error
    ops = KetchOperations(fs, Metrics(), AccessTrace(fs.paths_of))
    root = fs.resolve("/")
    ctx = pyfuse3.RequestContext()
    calls = {
        "getattr": lambda: ops.getattr(root, ctx),
        "lookup": lambda: ops.lookup(root, b"d", ctx),
        "opendir": lambda: ops.opendir(root, ctx),
        "open": lambda: ops.open(root, 0, ctx),
        "readlink": lambda: ops.readlink(root, ctx),
        "getxattr": lambda: ops.getxattr(root, b"user.x", ctx),
        "listxattr": lambda: ops.listxattr(root, ctx),
    }
    caplog.set_level(logging.ERROR, logger="ketch")
    for name, call in calls.items():
        for _ in range(2):  # and again: the handler is still there
            with pytest.raises(pyfuse3.FUSEError) as raised:
                trio.run(call)
            assert raised.value.errno == errno.EIO, name
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 * len(calls)
    assert all("\n" not in r.getMessage() for r in errors)
