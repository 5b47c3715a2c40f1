"""A symlink reads 0777 whatever its tar header says, as after umoci's unpack: through a
mount, after ``ketch unpack``, in ``ketch inspect`` and in the Python view."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import image_fs
from tests.integration.ketch_cli import ketch
from tests.treecmp import compare_trees

LINKS = {"link": 0o644, "d/abs": 0o600, "d/setuid": 0o4755}


def test_a_symlink_reads_0777_whatever_its_header_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KETCH_STATE_DIR", str(tmp_path / "state"))
    layer = ol.tar_bytes(
        [
            ol.file("target", b"x"),
            ol.dir("d"),
            ol.symlink("link", "target", mode=LINKS["link"]),
            ol.symlink("d/abs", "/etc/passwd", mode=LINKS["d/abs"]),
            ol.symlink("d/setuid", "../target", mode=LINKS["d/setuid"]),
        ]
    )
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:  # the crafted headers
        assert {m.name: m.mode for m in tar if m.issym()} == LINKS
    ol.write_oci_layout(tmp_path / "source", "t", [layer])
    image = f"oci:{tmp_path / 'ketch'}:t"
    ketch("convert", f"oci:{tmp_path / 'source'}:t", image)

    fs = image_fs(tmp_path / "ketch", "t")
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{tmp_path / 'source'}:t", str(tmp_path / "umoci")],
        capture_output=True,
        check=True,
        timeout=300,
    )
    ketch("unpack", image, str(tmp_path / "tree"))
    assert compare_trees(tmp_path / "umoci", tmp_path / "tree") == []
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ketch("mount", image, str(mountpoint), "--cache-dir", str(tmp_path / "cache"))
    try:
        for name in LINKS:
            expected = stat.S_IFLNK | 0o777
            assert os.lstat(tmp_path / "umoci" / name).st_mode == expected
            assert os.lstat(tmp_path / "tree" / name).st_mode == expected
            assert os.lstat(mountpoint / name).st_mode == expected, name
            assert fs.getattr(fs.resolve("/" + name)).mode == expected
            entry = json.loads(ketch("inspect", "--json", image, "/" + name).stdout)
            assert entry["mode"] == "0777"
        assert (mountpoint / "link").read_bytes() == b"x"
    finally:
        ketch("umount", str(mountpoint))
