"""Inputs that broke a parser, each kept in the corpus as ``regress-*`` and checked here
through the public API: what the parser must do with it now (the format's own error, or
the right result), where it used to raise something else."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import pytest

from ketch.cli.main import main
from ketch.config import load_config, parse_config
from ketch.errors import IntegrityError, UsageError
from ketch.format.blob import read_blob_table
from ketch.format.bootstrap import Bootstrap
from ketch.format.bootstrap_verify import verify_bootstrap
from ketch.format.codecs import MAX_CHUNK_SIZE, decoder
from ketch.format.records import InodeRecord
from ketch.oci import mediatypes as mt
from ketch.oci.layout import OciLayout
from ketch.oci.manifest import Descriptor, Manifest
from tests.fixtures.ketch import build_dir, open_image
from tests.fuzz.targets import seal_blob, seal_bootstrap

CORPUS = Path(__file__).parent / "corpus"


def regression(target: str, name: str) -> bytes:
    return (CORPUS / target / f"regress-{name}").read_bytes()


def test_a_name_with_a_newline_never_breaks_a_check_report_into_lines() -> None:
    problems = verify_bootstrap(Bootstrap(regression("bootstrap", "newline-in-name")))
    assert problems
    assert all("\n" not in problem for problem in problems), problems
    # The name is shown escaped, so the line still says which entry is wrong.
    assert any("/\\x00 \\x00/\\n\\x08z\\x82\\xd7: file type" in p for p in problems), problems


def test_a_chunk_size_past_the_largest_chunk_is_an_integrity_error() -> None:
    data = regression("blob", "lz4-size-2g.blob")
    _, entries = read_blob_table("blob", len(data), lambda offset, n: data[offset : offset + n])
    entry = next(e for e in entries if e.uncompressed_size > MAX_CHUNK_SIZE)
    compressed = data[entry.compressed_offset : entry.compressed_offset + entry.compressed_size]
    with pytest.raises(
        IntegrityError, match=r"chunk size: expected at most 16777216, found 2147483648"
    ):
        decoder(entry.codec).decompress(compressed, entry.uncompressed_size)


def test_a_zstd_frame_declaring_a_huge_size_is_an_integrity_error() -> None:
    """zstandard allocated what the frame header declared (here 1.9e18 bytes), whatever
    the size the record gives: MemoryError (found by fuzzing)."""
    data = seal_blob(regression("blob", "zstd-content-size.blob"))
    _, entries = read_blob_table("blob", len(data), lambda offset, n: data[offset : offset + n])
    entry = entries[5]  # the second zstd chunk: its frame header was mutated
    compressed = data[entry.compressed_offset : entry.compressed_offset + entry.compressed_size]
    with pytest.raises(
        IntegrityError,
        match=r"zstd chunk: expected 4096 bytes, its frame declares 1966685453569298176",
    ):
        decoder(entry.codec).decompress(compressed, entry.uncompressed_size)


@pytest.mark.parametrize("codec", [0, 1, 2])
def test_every_codec_refuses_a_size_past_the_largest_chunk(codec: int) -> None:
    with pytest.raises(IntegrityError, match="chunk size"):
        decoder(codec).decompress(b"\0" * 16, MAX_CHUNK_SIZE + 1)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("annotations-list.json", r"fuzz: annotations: expected a string map, found list"),
        ("json-deep.json", r"fuzz: expected JSON, found arrays or objects nested too deep"),
        ("json-bigint.json", r"fuzz: expected JSON, found invalid data \(Exceeds the limit"),
    ],
)
def test_hostile_manifests_are_integrity_errors(name: str, message: str) -> None:
    with pytest.raises(IntegrityError, match=message):
        Manifest.parse(regression("manifest", name), "fuzz")


def _layout_with_index(root: Path, index: bytes) -> OciLayout:
    layout = OciLayout.create(root)
    (root / "index.json").write_bytes(index)
    return layout


def test_tagging_into_an_index_whose_manifests_are_not_a_list_is_refused(tmp_path: Path) -> None:
    index = regression("manifest", "index-manifests-int.json")
    layout = _layout_with_index(tmp_path / "oci", index)
    descriptor = Descriptor(mt.OCI_MANIFEST, "sha256:" + "1" * 64, 10)
    with pytest.raises(IntegrityError, match=r"index.json: manifests: expected a list, found int"):
        layout.set_tag("latest", descriptor)
    assert (tmp_path / "oci" / "index.json").read_bytes() == index  # left as it was


def test_tagging_keeps_a_foreign_entry_whose_annotations_are_not_a_map(tmp_path: Path) -> None:
    layout = _layout_with_index(
        tmp_path / "oci", regression("manifest", "index-annotations-list.json")
    )
    descriptor = Descriptor(mt.OCI_MANIFEST, "sha256:" + "1" * 64, 10)
    layout.set_tag("latest", descriptor)
    manifests = json.loads((tmp_path / "oci" / "index.json").read_bytes())["manifests"]
    assert manifests[0] == {"annotations": [1]}
    assert manifests[1]["annotations"] == {mt.ANNOTATION_REF_NAME: "latest"}


def test_a_configuration_that_is_not_utf8_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(regression("config", "latin1.toml"))
    with pytest.raises(UsageError, match=rf"{path}: not valid TOML: not UTF-8 at byte 19"):
        load_config(path)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bigint.toml", r"config: not valid TOML: Exceeds the limit \(4300 digits\)"),
        ("deep.toml", r"config: not valid TOML: arrays or tables nested too deep"),
    ],
)
def test_hostile_configurations_are_usage_errors(name: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_config(regression("config", name).decode())


def test_a_prefetch_list_that_is_not_utf8_names_its_paths_by_their_bytes(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "passwd").write_bytes(b"root:x:0:0::/:/bin/sh\n")
    (rootfs / "caf\udce9").write_bytes(b"latin-1 name\n")
    listing = tmp_path / "prefetch.list"
    listing.write_bytes(regression("prefetch_list", "latin1.list"))
    dest = tmp_path / "oci"
    assert main(["build", str(rootfs), f"oci:{dest}:ketch", "--prefetch-list", str(listing)]) == 0
    bootstrap = open_image(dest).bootstrap
    assert bootstrap.prefetch() == [
        bootstrap.resolve(b"/caf\xe9"),
        bootstrap.resolve("/etc/passwd"),
    ]


def test_a_tree_deeper_than_the_recursion_limit_verifies(tmp_path: Path) -> None:
    """Found while fuzzing the walk: the check recursed once per level, so a valid image
    with 600 nested directories failed it (and ``ketch unpack`` refused it)."""
    rootfs = tmp_path / "rootfs"
    deep = rootfs / "/".join(["d"] * 600)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"x")
    try:
        build_dir(rootfs, tmp_path / "oci")
    finally:  # bottom up: removing it whole would recurse 600 deep too
        (deep / "f").unlink()
        while deep != rootfs:
            deep.rmdir()
            deep = deep.parent
    bootstrap = open_image(tmp_path / "oci").bootstrap
    assert bootstrap.inode_count == 602
    assert verify_bootstrap(bootstrap) == []


def _share_ranges(bootstrap: Bootstrap, kind: int, table_size: int) -> bytes:
    """The bootstrap with every inode of type ``kind`` claiming the whole dirent or
    chunkref table (``table_size`` records), sealed again as a hostile author would."""
    sb = bootstrap.superblock
    data = bytearray(bootstrap.raw)
    for index in range(1, bootstrap.inode_count):
        record = bootstrap.inode(index)
        if stat.S_IFMT(record.mode) == kind:
            offset = sb.inode_offset + index * InodeRecord.size_of
            shared = dataclasses.replace(record, data_start=0, data_count=table_size)
            data[offset : offset + InodeRecord.size_of] = shared.pack()
    return seal_bootstrap(bytes(data))


@pytest.mark.parametrize(("kind", "what"), [(stat.S_IFREG, "chunkrefs"), (stat.S_IFDIR, "dirents")])
def test_records_shared_by_many_inodes_end_the_check(tmp_path: Path, kind: int, what: str) -> None:
    """Every file (or directory) claiming the whole chunkref (or dirent) table made the
    check read the table once per inode and report each record again: a 546 KB bootstrap
    of 3000 files took 200 s and 9 million problem lines. Each record belongs to one
    inode (docs/format.md §2.3, §2.4): the first record claimed twice ends the walk."""
    rootfs = tmp_path / "rootfs"
    for i in range(100):
        (rootfs / f"d{i:03d}").mkdir(parents=True)
        (rootfs / f"d{i:03d}" / "f").write_bytes(b"%d" % i)
    build_dir(rootfs, tmp_path / "oci", chunk_size=4096)
    bootstrap = open_image(tmp_path / "oci").bootstrap
    sb = bootstrap.superblock
    size = sb.chunkref_count if kind == stat.S_IFREG else sb.dirent_count
    problems = verify_bootstrap(Bootstrap(_share_ranges(bootstrap, kind, size)))
    assert len(problems) < 2 * size, problems[:5]
    assert problems[-1].endswith(
        f"{what} [0, {size}): expected this {'file' if what == 'chunkrefs' else 'directory'}'s "
        f"own, found shared with another {'file' if what == 'chunkrefs' else 'directory'}"
    ), problems[-1]
