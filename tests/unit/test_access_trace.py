"""The access trace: a read records its inode, whatever the size of the file's directory;
paths are resolved when the trace is asked for, in one scan of each directory.

Issue 16, defect 3: every FUSE read resolved the file's path by scanning its parent
directory linearly, on the event loop. In one directory of 100,000 files, reading the
last 200 cost 20 million dirent visits. Here the reads go through the daemon's real FUSE
operations (called directly, without a kernel) over a real bootstrap whose dirent reads
are counted; a read that visits a dirent at all fails at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ketch.daemon.access_trace import AccessTrace
from ketch.daemon.fuse_ops import KetchOperations
from ketch.daemon.metrics import Metrics
from ketch.format.bootstrap import Bootstrap
from ketch.format.records import DirentRecord
from ketch.fs.image_fs import ImageFS
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.oci_layout_store import OciLayoutStore
from tests.fixtures.bootstrap_tree import bootstrap_of, wide

FILES = 100_000


class _DirentBudgetError(Exception):
    pass


class CountingBootstrap(Bootstrap):
    """A real bootstrap that counts dirent reads, and stops past a budget."""

    def __init__(self, data: bytes, budget: int) -> None:
        super().__init__(data)
        self.visits = 0
        self.budget = budget

    def dirent(self, index: int) -> DirentRecord:
        self.visits += 1
        if self.visits > self.budget:
            raise _DirentBudgetError(f"{self.visits} dirent reads, budget {self.budget}")
        return super().dirent(index)


@pytest.fixture(scope="module")
def wide_bytes() -> bytes:
    return bytes(bootstrap_of(wide(FILES)).raw)


def _daemon(bootstrap: Bootstrap, tmp_path: Path) -> tuple[KetchOperations, AccessTrace]:
    store = OciLayoutStore.create(tmp_path / "layout")
    fs = ImageFS(bootstrap, ChunkReader(store, bootstrap.digest_algorithm))
    trace = AccessTrace(fs.paths_of)
    return KetchOperations(fs, Metrics(), trace), trace


def test_reads_visit_no_dirent_wherever_the_file_is_in_its_directory(
    wide_bytes: bytes, tmp_path: Path
) -> None:
    bootstrap = CountingBootstrap(wide_bytes, budget=0)
    ops, trace = _daemon(bootstrap, tmp_path)
    # Inodes are numbered breadth first: big's files follow the root's two entries.
    first = [4 + i for i in range(200)]
    last = [4 + FILES - 200 + i for i in range(200)]

    async def read_all(inodes: list[int]) -> None:
        for inode in inodes:
            for _ in range(3):
                assert await ops.read(inode, 0, 4096) == b""

    trio.run(read_all, first)
    trio.run(read_all, last)
    assert bootstrap.visits == 0
    # Asked for, the 400 paths cost one scan of big/ (cut short after its last file
    # read) and one of the root: 100,000 + 2 visits, not one scan per file.
    bootstrap.budget = FILES + 2
    files = trace.files()
    assert [entry["path"] for entry in files] == [
        f"/big/f{inode - 4:06d}" for inode in first + last
    ]
    assert all(entry["reads"] == 3 for entry in files)
    visits = bootstrap.visits
    assert trace.files() == files  # kept: asked again, nothing is scanned
    assert bootstrap.visits == visits


def test_the_trace_lists_files_in_first_access_order_with_their_bytes(tmp_path: Path) -> None:
    bootstrap = bootstrap_of(wide(10))
    trace = AccessTrace(
        ImageFS(
            bootstrap, ChunkReader(OciLayoutStore.create(tmp_path), bootstrap.digest_algorithm)
        ).paths_of
    )
    for inode, nbytes in [(7, 10), (4, 5), (7, 1), (14, 0)]:
        trace.record(inode, nbytes)
    files = trace.files()
    assert [(f["path"], f["inode"], f["bytes_read"], f["reads"]) for f in files] == [
        ("/big/f000003", 7, 11, 2),
        ("/big/f000000", 4, 5, 1),
        ("/small/a", 14, 0, 1),
    ]
    trace.record(5, 1)  # a file read after the first answer is resolved on the next
    assert trace.files()[-1]["path"] == "/big/f000001"
