"""Layers written by GNU tar in each of its formats convert and unpack as umoci unpacks them.

One tree with the awkward cases (long names and link names, a deep path, hardlinks,
symlinks, a fifo, a device, setuid, big ids, nanosecond mtimes, xattrs, files with holes)
is archived by GNU tar as ``gnu``, ``oldgnu`` and ``posix`` (``ustar`` cannot hold the
long link or the big ids; Python's tarfile covers it in the unit tests), and as ``posix``
with sparse files in each pax sparse version (0.0, 0.1, 1.0). Each archive becomes a
one-layer OCI image; ``ketch convert`` then ``ketch unpack`` must give umoci's tree. GNU
tar's old ``S`` sparse type is refused by umoci and by Ketch alike, with one line naming
the file, and no image tagged.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.ocilayout import write_oci_layout
from tests.integration.ketch_cli import ketch
from tests.treecmp import compare_trees


def _tree(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "file").write_text("hello\n")
    os.link(root / "dir" / "file", root / "dir" / "hard")
    (root / ("long-" * 30)).write_text("a name over 100 bytes\n")
    os.symlink("t" * 150, root / "long-link")
    deep = root.joinpath(*[f"level{i:02}" for i in range(25)])
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep\n")
    os.symlink("/etc/passwd", root / "absolute-link")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o20666, os.makedev(1, 3))
    os.chmod(root / "dir" / "file", 0o4755)
    os.chown(root / "dir" / "sub", 3_000_000, 2_097_152)
    os.setxattr(root / "dir" / "file", "user.note", b"value\x00binary")
    os.utime(root / "dir" / "file", ns=(1_600_000_000_123_456_789,) * 2)
    with open(root / "holes", "wb") as f:
        f.seek(3 << 20)
        f.write(b"in the middle")
        f.truncate(9 << 20)
    with open(root / "tail-hole", "wb") as f:
        f.write(b"head")
        f.truncate(2 << 20)
    with open(root / "all-hole", "wb") as f:
        f.truncate(5 << 20)
    (root / "dense").write_bytes(os.urandom(3 << 20))


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tar-formats") / "root"
    _tree(root)
    return root


def _archive(root: Path, options: list[str]) -> bytes:
    return subprocess.run(
        ["tar", *options, "--numeric-owner", "-cf", "-", "-C", str(root), "."],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout


def _image(tmp_path: Path, layer: bytes) -> str:
    write_oci_layout(tmp_path / "source", "t", [layer])
    return f"oci:{tmp_path / 'source'}:t"


@pytest.mark.parametrize(
    "options",
    [
        ["--format=gnu"],
        ["--format=oldgnu"],
        ["--format=posix", "--xattrs"],
        ["--format=posix", "--sparse", "--sparse-version=0.0"],
        ["--format=posix", "--sparse", "--sparse-version=0.1"],
        ["--format=posix", "--sparse", "--sparse-version=1.0"],
    ],
    ids=lambda options: "-".join(o.split("=")[-1].strip("-") for o in options),
)
def test_gnu_tar_layer_unpacks_as_umoci_unpacks_it(
    source_tree: Path, tmp_path: Path, options: list[str]
) -> None:
    layer = _archive(source_tree, options)
    if "--sparse" in options:
        assert b"GNU.sparse." in layer  # the holes really are stored as a sparse map
    image = _image(tmp_path, layer)
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", image[len("oci:") :], str(tmp_path / "umoci")],
        capture_output=True,
        check=True,
        timeout=300,
    )
    ketch("convert", image, f"oci:{tmp_path / 'ketch'}:t")
    ketch("unpack", f"oci:{tmp_path / 'ketch'}:t", str(tmp_path / "tree"))
    differences = compare_trees(tmp_path / "umoci", tmp_path / "tree")
    assert differences == [], "\n".join(str(d) for d in differences[:20])
    assert (tmp_path / "tree" / "holes").read_bytes()[3 << 20 :][:13] == b"in the middle"
    # Zeros are left as holes, as umoci leaves them: 5 MiB of file, next to no disk.
    all_hole = (tmp_path / "tree" / "all-hole").stat()
    assert all_hole.st_size == 5 << 20 and all_hole.st_blocks * 512 < 64 << 10


def test_old_gnu_sparse_type_is_refused_like_umoci_refuses_it(
    source_tree: Path, tmp_path: Path
) -> None:
    layer = _archive(source_tree, ["--format=gnu", "--sparse"])
    assert b"GNU.sparse." not in layer  # the old GNU way: type S, its map in the header
    image = _image(tmp_path, layer)
    umoci = subprocess.run(
        ["umoci", "raw", "unpack", "--image", image[len("oci:") :], str(tmp_path / "umoci")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert umoci.returncode != 0
    result = ketch("convert", image, f"oci:{tmp_path / 'ketch'}:t", check=False)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GNU sparse" in lines[0], result.stderr
    index = tmp_path / "ketch" / "index.json"
    assert not index.exists() or json.loads(index.read_text())["manifests"] == []
