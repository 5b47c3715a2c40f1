"""A tree deeper than Python's recursion limit (1,500 directories, as umoci unpacks)
converts, checks, unpacks as umoci unpacks it, inspects, and builds again from a
directory."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import ocilayout as ol
from tests.integration.ketch_cli import ketch
from tests.treecmp import compare_trees

DEPTH = 1500
LEAF = "/".join(["a"] * DEPTH)


def _layer() -> bytes:
    # The directories are implicit parents: umoci takes minutes over a tar of 1,500
    # nested directory entries (it resolves each path from the root), seconds over this.
    return ol.tar_bytes(
        [
            ol.file(f"{LEAF}/leaf", b"deep\n"),
            ol.symlink(f"{LEAF}/up", "../../.."),
            ol.hardlink("top", f"{LEAF}/leaf"),
            ol.dir("a/a", mode=0o750, uid=7),
        ]
    )


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, emptied after the test: pytest removes old temporary directories
    with a recursive ``shutil.rmtree``, which a tree this deep would break for every
    later session on the machine."""
    yield tmp_path
    subprocess.run(["rm", "-rf", "--", str(tmp_path)], check=True, timeout=300)


def test_a_1500_deep_tree_converts_checks_unpacks_and_inspects(deep_tmp: Path) -> None:
    tmp_path = deep_tmp
    ol.write_oci_layout(tmp_path / "source", "t", [_layer()])
    image = f"oci:{tmp_path / 'ketch'}:t"
    ketch("convert", f"oci:{tmp_path / 'source'}:t", image)
    check = ketch("check", image, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    ketch("unpack", image, str(tmp_path / "tree"))
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{tmp_path / 'source'}:t", str(tmp_path / "umoci")],
        capture_output=True,
        check=True,
        timeout=300,
    )
    # Implicit parents: umoci stamps them with the time of the unpack, Ketch with 0.
    differences = compare_trees(tmp_path / "umoci", tmp_path / "tree", ignore_dir_mtime=True)
    assert differences == [], "\n".join(str(d) for d in differences[:20])

    summary = json.loads(ketch("inspect", "--json", image).stdout)
    assert summary["directories"] == DEPTH + 1
    leaf = json.loads(ketch("inspect", "--json", image, f"/{LEAF}/leaf").stdout)
    assert (leaf["type"], leaf["nlink"], leaf["size"]) == ("file", 2, 5)

    # The unpacked tree builds again (a directory walk as deep), to the same leaf.
    rebuilt = f"oci:{tmp_path / 'rebuilt'}:t"
    ketch("build", str(tmp_path / "tree"), rebuilt)
    assert ketch("check", rebuilt, check=False).returncode == 0
    again = json.loads(ketch("inspect", "--json", rebuilt, f"/{LEAF}/leaf").stdout)
    assert again["digest"] == leaf["digest"]
