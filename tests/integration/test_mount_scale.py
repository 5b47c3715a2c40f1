"""Mounts at scale: a directory of 100,000 files read by 16 readers at once, and a tree
1,500 directories deep, through a real FUSE mount, with the access trace naming what
was read (issue 16). Timings of the same shapes against ext4 are in bench/large_dir.py.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ketch.daemon.api import api_get
from ketch.daemon.state import read_record
from tests.fixtures import ocilayout as ol
from tests.integration.ketch_cli import ketch

FILES = 100_000
DEPTH = 1_500
READERS = 16
SAMPLE = 7  # every SAMPLE-th file of the directory is read, beside the first and last


pytestmark = pytest.mark.usefixtures("private_state")


def _content(i: int) -> bytes:
    return b"file %06d\n" % i


def _image(tmp_path: Path, entries: list[ol.TarEntry]) -> str:
    """``entries`` as a one-layer OCI image, converted by ``ketch convert``."""
    ol.write_oci_layout(tmp_path / "src", "src", [ol.tar_bytes(entries)])
    ketch("convert", f"oci:{tmp_path / 'src'}:src", f"oci:{tmp_path / 'ketch'}:img")
    return f"oci:{tmp_path / 'ketch'}:img"


def _mount(image: str, tmp_path: Path) -> tuple[Path, Path]:
    """The mountpoint and the daemon's API socket."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ketch("mount", image, str(mountpoint), "--cache-dir", str(tmp_path / "cache"))
    record = read_record(mountpoint)
    assert record is not None
    return mountpoint, Path(record.api_sock)


def _metric(sock: Path, name: str) -> float:
    for line in api_get(sock, "/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"metric {name} not found")


def test_a_directory_of_100000_files_listed_stated_and_read_by_16_readers(
    tmp_path: Path,
) -> None:
    entries = [ol.dir("big")] + [ol.file(f"big/f{i:06d}", _content(i)) for i in range(FILES)]
    mountpoint, sock = _mount(_image(tmp_path, entries), tmp_path)
    big = mountpoint / "big"
    names = sorted(os.listdir(big))
    assert names == [f"f{i:06d}" for i in range(FILES)]
    sizes = {os.stat(big / name).st_size for name in names}
    assert sizes == {len(_content(0))}

    # 16 readers, each a stride of a sample spread over the whole directory (the first
    # files, the last ones and every SAMPLE-th between): every byte must be right. Reading
    # all 100,000 is the bench row large_dir, against ext4.
    sample = sorted({*range(1000), *range(FILES - 1000, FILES), *range(0, FILES, SAMPLE)})

    def read_stride(start: int) -> list[int]:
        return [i for i in sample[start::READERS] if (big / names[i]).read_bytes() != _content(i)]

    with ThreadPoolExecutor(READERS) as pool:
        wrong = [i for found in pool.map(read_stride, range(READERS)) for i in found]
    assert wrong == []
    assert _metric(sock, "ketch_read_errors_total") == 0
    # The trace names every file read, resolved when asked for.
    files = json.loads(api_get(sock, "/api/v1/files", timeout=120))
    assert sorted(entry["path"] for entry in files) == [f"/big/{names[i]}" for i in sample]
    # At least the file once: the kernel may drop a page under memory pressure and ask again.
    assert all(entry["bytes_read"] >= len(_content(0)) for entry in files)


def test_a_tree_1500_deep_through_the_mount_and_in_the_trace(tmp_path: Path) -> None:
    entries = [ol.dir("/".join(["d"] * (n + 1))) for n in range(DEPTH)]
    entries.append(ol.file("/".join(["d"] * DEPTH) + "/leaf", b"at the bottom\n"))
    mountpoint, sock = _mount(_image(tmp_path, entries), tmp_path)
    relative = "/".join(["d"] * DEPTH) + "/leaf"
    # One component at a time (no path is longer than a name), then the whole path at once
    # (3,000 bytes: under PATH_MAX, the kernel walks it through 1,500 lookups).
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(DEPTH):
            assert os.listdir(fd) == ["d"]
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        assert os.listdir(fd) == ["leaf"]
        leaf = os.open("leaf", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.read(leaf, 100) == b"at the bottom\n"
        finally:
            os.close(leaf)
    finally:
        os.close(fd)
    assert (mountpoint / relative).read_bytes() == b"at the bottom\n"
    assert os.stat(mountpoint / relative).st_size == 14
    files = json.loads(api_get(sock, "/api/v1/files"))
    assert [entry["path"] for entry in files] == ["/" + relative]
