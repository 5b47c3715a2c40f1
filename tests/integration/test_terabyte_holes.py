"""A file of 2^40 bytes, all holes but a few bytes in the middle (issue 16, "Scale").

GNU tar archives it as a pax sparse file (a map of a few bytes); ``ketch convert`` makes
it an image whose holes cost chunk records only, ``ketch build`` of the directory makes
the same image, ``ketch inspect`` and a FUSE mount show its size and read zeros at the
start, middle and end, and ``ketch unpack`` writes it sparse, as GNU tar extracts it.
(umoci cannot be the reference here: it writes a sparse file's holes out as zeros, so a
terabyte of holes fills the disk.)
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.ocilayout import write_oci_layout
from tests.integration.ketch_cli import KETCH, ketch

SIZE = 1 << 40
MARK_AT = (1 << 39) + 12345
MARK = b"in the middle of a terabyte"
MIB = 1 << 20


@pytest.fixture(scope="module")
def holes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with ``big``: SIZE bytes, MARK at MARK_AT, holes everywhere else."""
    root = tmp_path_factory.mktemp("terabyte") / "root"
    root.mkdir()
    with open(root / "big", "wb") as f:
        f.truncate(SIZE)
        f.seek(MARK_AT)
        f.write(MARK)
    return root


@pytest.fixture
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    state = tmp_path / "state"
    monkeypatch.setenv("KETCH_STATE_DIR", str(state))
    yield state
    for record in (state / "mounts").glob("*.json") if (state / "mounts").exists() else []:
        mountpoint = json.loads(record.read_text())["mountpoint"]
        subprocess.run([*KETCH, "umount", mountpoint], capture_output=True, check=False)


Read = Callable[[int, int], bytes]


def _samples(read: Read) -> None:
    """Zeros at the start, around the mark, at the end; the mark itself."""
    assert read(0, 4096) == bytes(4096)
    assert read(MARK_AT - 100, 100 + len(MARK) + 100) == bytes(100) + MARK + bytes(100)
    assert read(MARK_AT + MIB, 4096) == bytes(4096)
    assert read(SIZE - 4096, 4096) == bytes(4096)
    assert read(SIZE, 4096) == b""  # nothing past the end


def _pread(path: Path) -> Read:
    def read(offset: int, size: int) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    return read


@pytest.mark.parametrize("version", ["0.1", "1.0"])
def test_a_terabyte_of_holes_converts_mounts_and_unpacks_sparse(
    holes: Path, tmp_path: Path, private_state: Path, version: str
) -> None:
    options = ["--format=posix", "--sparse", f"--sparse-version={version}", "--numeric-owner"]
    layer = subprocess.run(
        ["tar", *options, "-cf", "-", "-C", str(holes), "."],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert b"GNU.sparse." in layer and len(layer) < 64 << 10  # the holes are a map
    write_oci_layout(tmp_path / "src", "t", [layer])
    image = f"oci:{tmp_path / 'ketch'}:t"
    ketch("convert", f"oci:{tmp_path / 'src'}:t", image)

    # The image of the directory itself is the same image (the same root digest).
    ketch("build", str(holes), f"oci:{tmp_path / 'built'}:t")
    shown, built = (
        json.loads(ketch("inspect", ref, "--json").stdout)
        for ref in (image, f"oci:{tmp_path / 'built'}:t")
    )
    assert shown["root_digest"] == built["root_digest"]
    # Every byte is a chunk reference (1 MiB chunks), the holes all one chunk.
    assert (shown["bytes"], shown["chunks"], shown["unique_chunks"]) == (SIZE, SIZE // MIB, 2)
    assert shown["bootstrap"]["size"] < 13 * MIB  # 12 bytes a chunk reference

    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ketch("mount", image, str(mountpoint), "--cache-dir", str(tmp_path / "cache"))
    assert (mountpoint / "big").stat().st_size == SIZE
    _samples(_pread(mountpoint / "big"))
    ketch("umount", str(mountpoint))

    ketch("unpack", image, str(tmp_path / "tree"))
    # GNU tar's own extraction is the reference: the same size, as sparse, same bytes.
    (tmp_path / "gnu").mkdir()
    subprocess.run(
        ["tar", "--sparse", "-xf", "-", "-C", str(tmp_path / "gnu")],
        input=layer,
        check=True,
        timeout=60,
    )
    ours, gnu = (tmp_path / "tree" / "big").stat(), (tmp_path / "gnu" / "big").stat()
    assert ours.st_size == gnu.st_size == SIZE
    assert ours.st_blocks * 512 <= 4 * MIB  # one chunk of data written, holes elsewhere
    _samples(_pread(tmp_path / "tree" / "big"))
    _samples(_pread(tmp_path / "gnu" / "big"))
