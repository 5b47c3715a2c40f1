"""OCI layout directories: tags, indexes with platforms, atomic writes, checked reads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketch.errors import IntegrityError, NotFoundError
from ketch.oci import mediatypes as mt
from ketch.oci.layout import TEMP_AREA, OciLayout
from ketch.oci.manifest import Descriptor, Platform
from ketch.process_identity import process_start, this_process
from tests.fixtures import ocilayout as ol


def test_tags_and_missing_tag_error_lists_tags(tmp_path: Path) -> None:
    ol.write_oci_layout(tmp_path, "a", [ol.tar_bytes([ol.file("x", b"1")])])
    ol.write_oci_layout(tmp_path, "b", [ol.tar_bytes([ol.file("x", b"2")])])
    layout = OciLayout.open(tmp_path)
    assert sorted(layout.tags()) == ["a", "b"]
    with pytest.raises(NotFoundError, match="tags: a, b"):
        layout.resolve_tag("c")


def test_platform_is_chosen_from_an_index(tmp_path: Path) -> None:
    amd = ol.write_oci_layout(tmp_path, "amd", [ol.tar_bytes([ol.file("arch", b"amd64")])])
    arm = ol.write_oci_layout(tmp_path, "arm", [ol.tar_bytes([ol.file("arch", b"arm64")])])
    layout = OciLayout.open(tmp_path)
    entries = [
        Descriptor(
            mt.OCI_MANIFEST,
            digest,
            layout.blob_size(digest),
            platform={"os": "linux", "architecture": arch},
        )
        for digest, arch in ((arm, "arm64"), (amd, "amd64"))
    ]
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [e.to_json() for e in entries]}
    ).encode()
    digest = layout.write_blob(index)
    layout.set_tag("multi", Descriptor(mt.OCI_INDEX, digest, len(index)))
    assert layout.manifest("multi")[0].digest == amd
    assert layout.manifest("multi", Platform.parse("linux/arm64"))[0].digest == arm
    with pytest.raises(NotFoundError, match="linux/s390x"):
        layout.manifest("multi", Platform.parse("linux/s390x"))


def test_blob_reads_are_checked_against_their_digest(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    digest = layout.write_blob(b"hello")
    assert layout.read_blob(digest) == b"hello"
    layout.blob_path(digest).write_bytes(b"HELLO")
    with pytest.raises(IntegrityError, match=digest):
        layout.read_blob(digest)
    with pytest.raises(IntegrityError):
        layout.blob_path("sha256:../../etc/passwd")


def test_set_tag_replaces_only_that_tag_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    one = layout.write_blob(b"1")
    two = layout.write_blob(b"2")
    layout.set_tag("x", Descriptor(mt.OCI_MANIFEST, one, 1))
    layout.set_tag("y", Descriptor(mt.OCI_MANIFEST, one, 1))
    layout.set_tag("x", Descriptor(mt.OCI_MANIFEST, two, 1))
    assert layout.resolve_tag("x").digest == two
    assert layout.resolve_tag("y").digest == one
    assert not [p for p in (tmp_path / "l").rglob(".tmp-*")]


def test_temporaries_live_in_the_layouts_temp_area(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "layout")
    pid, started = this_process()
    assert layout.temp_dir() == tmp_path / "layout" / TEMP_AREA / f"{pid}-{started}"
    layout.write_blob(b"data")
    assert [p.name for p in (tmp_path / "layout" / "blobs" / "sha256").iterdir()] == [
        hashlib.sha256(b"data").hexdigest()
    ]
    assert list(layout.temp_dir().iterdir()) == []


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    layout = OciLayout.create(tmp_path / "layout")
    area = tmp_path / "layout" / TEMP_AREA
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid(), open(f'/proc/{os.getpid()}/stat').read().rsplit(')', 1)[1].split()[19])"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    dead = area / f"{gone[0]}-{gone[1]}"
    (dead / "deep").mkdir(parents=True)
    (dead / "deep" / ".tmp-spool-x").write_bytes(b"x" * 1000)
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        live = area / f"{sleeper.pid}-{process_start(sleeper.pid)}"
        live.mkdir()
        reused = area / f"{sleeper.pid}-1"  # the pid, but another start time: gone
        reused.mkdir()
        other = area / "not-ours"
        other.mkdir()
        blobs = tmp_path / "layout" / "blobs" / "sha256"
        old, fresh = blobs / ".tmp-spool-old", blobs / ".tmp-spool-fresh"
        old.write_bytes(b"o")
        fresh.write_bytes(b"f")
        os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
        removed = layout.remove_stale_temporaries()
        sleeper.kill()
    assert sorted(removed) == sorted([dead, reused, old])
    assert live.is_dir() and other.is_dir() and fresh.exists()
    assert not dead.exists() and not reused.exists() and not old.exists()
