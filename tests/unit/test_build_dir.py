"""`ketch build` from a directory: the unpacked image equals the source tree."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ketch.cli.main import main
from tests.fixtures.ketch import build_dir, unpack_image
from tests.treecmp import compare_trees


def _make_tree(root: Path) -> None:
    (root / "etc" / "deep" / "er").mkdir(parents=True)
    (root / "etc" / "conf").write_bytes(b"k=v\n")
    (root / "etc" / "deep" / "er" / ("n" * 200)).write_bytes(os.urandom(70_000))
    os.link(root / "etc" / "conf", root / "etc" / "conf-link")
    (root / "etc" / "sym").symlink_to("/etc/conf")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o20666, os.makedev(1, 3))
    (root / "suid").write_bytes(b"#!/bin/sh\n")
    (root / "suid").chmod(0o4755)
    os.chown(root / "etc" / "conf", 1000, 1001)
    os.setxattr(root / "etc" / "conf", "user.k", b"\x00v")
    (root / "empty").write_bytes(b"")
    for path in [root / "etc" / "deep" / "er", root / "etc" / "deep", root / "etc", root]:
        os.utime(path, ns=(0, 1_612_325_106_123_456_789), follow_symlinks=False)
    os.utime(root / "etc" / "sym", ns=(0, 5), follow_symlinks=False)


def test_built_image_unpacks_to_the_source_tree(tmp_path: Path) -> None:
    source = tmp_path / "rootfs"
    source.mkdir()
    _make_tree(source)
    build_dir(source, tmp_path / "dst", chunk_size=16384)
    out = unpack_image(tmp_path / "dst", tmp_path / "out")
    differences = compare_trees(source, out)
    assert differences == [], [str(d) for d in differences]


def test_build_command_is_reproducible(tmp_path: Path) -> None:
    source = tmp_path / "rootfs"
    source.mkdir()
    _make_tree(source)
    assert main(["build", str(source), f"oci:{tmp_path / 'a'}:t", "--cmd", "/bin/sh -c true"]) == 0
    assert main(["build", str(source), f"oci:{tmp_path / 'b'}:t", "--cmd", "/bin/sh -c true"]) == 0
    index_a = (tmp_path / "a" / "index.json").read_bytes()
    index_b = (tmp_path / "b" / "index.json").read_bytes()
    assert index_a == index_b
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--config", f"oci:{tmp_path / 'a'}:t"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert config["config"]["Cmd"] == ["/bin/sh", "-c", "true"]
