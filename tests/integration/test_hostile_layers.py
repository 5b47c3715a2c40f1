"""Hostile and broken source layers: ``ketch convert`` confines or refuses them, cleanly.

Each test writes an OCI layout into ``tmp_path`` with :mod:`tests.fixtures.ocilayout`
and runs the CLI in-process (:func:`ketch.cli.main.main`).

- A refusal is exactly one ``ketch: error:`` line on stderr, naming the layer digest or
  the path involved, with the exit code of its ``KetchError`` leaf; never 70 (a bug).
- A failed convert moves no tag: a fresh destination has no tag, and a destination that
  held another image keeps ``index.json`` byte for byte, and that image still passes
  ``ketch check``.
- A confined entry (umoci's rules: ``..`` above the root and absolute paths stay in the
  root, symlinked parents resolve inside the root) is looked up where it landed, in the
  image (``inspect --json``) and in the unpacked tree.
- Nothing is written outside the destinations: a sentinel directory beside them stays
  empty, no hostile name appears anywhere else under ``tmp_path`` or its ancestors, nor
  in the host's ``/``, ``/tmp`` or ``/etc``, and the host's ``/etc/passwd`` is unchanged;
  a failed unpack leaves neither its destination nor a ``.DEST.ketch-*`` staging
  directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ketch.cli.main import main
from tests.fixtures.ocilayout import (
    DEFAULT_MTIME_NS,
    LAYER_MEDIA_TYPES,
    REF_NAME_ANNOTATION,
    TarEntry,
    compress,
    dir,
    file,
    garbage,
    hardlink,
    opaque,
    sha256_digest,
    symlink,
    tar_bytes,
    truncate,
    whiteout,
    write_oci_layout,
)
from tests.treecmp import compare_trees

TAG = "hostile"
GOOD_TAG = "good"
GZIP = LAYER_MEDIA_TYPES["gzip"]
ZSTD = LAYER_MEDIA_TYPES["zstd"]
TAR = LAYER_MEDIA_TYPES["none"]
INTERNAL_ERROR = 70

# Exit codes of the KetchError leaves (src/ketch/errors.py).
USAGE, INTEGRITY, BAD_LAYER, UNSUPPORTED = 2, 4, 5, 6

# Names a hostile entry aims outside the root: none may appear outside a destination.
ESCAPE = "ketch-probe-escape"
ABS_DIR = "ketch-probe-abs"
TMP_FILE = "ketch-probe-tmpfile"
LINK = "ketch-probe-link"
HOSTILE_NAMES = frozenset({ESCAPE, ABS_DIR, TMP_FILE, LINK, "passwd", "etc", "evil", "escape"})
HOST_PROBES = (
    Path("/") / ESCAPE,
    Path("/") / ABS_DIR,
    Path("/") / LINK,
    Path("/tmp") / TMP_FILE,
    Path("/etc") / ESCAPE,
)
HOST_PASSWD = Path("/etc/passwd")

PASSWD = b"root:x:0:0:image root:/root:/bin/sh\n"


# -- running the CLI --------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def ketch(capsys: pytest.CaptureFixture[str], *argv: str) -> Result:
    """Run ``ketch argv`` in-process; never an internal error."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code != INTERNAL_ERROR, f"ketch {' '.join(argv)}: internal error: {captured.err}"
    assert "internal error" not in captured.err, captured.err
    return Result(code, captured.out, captured.err)


def assert_error(result: Result, code: int, *names: str) -> None:
    """Exit ``code``, nothing on stdout, one ``ketch: error:`` line naming one of ``names``."""
    assert result.code == code, f"expected exit {code}, found {result.code}: {result.err}"
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, found {len(lines)}: {result.err!r}"
    assert lines[0].startswith("ketch: error: "), lines[0]
    assert any(name in lines[0] for name in names), f"expected one of {names} in {lines[0]!r}"


# -- layouts ----------------------------------------------------------------------------


def tags_of(layout: Path) -> dict[str, str]:
    """Tag -> manifest digest of an OCI layout."""
    index = json.loads((layout / "index.json").read_bytes())
    return {
        m["annotations"][REF_NAME_ANNOTATION]: m["digest"]
        for m in index.get("manifests", [])
        if REF_NAME_ANNOTATION in m.get("annotations", {})
    }


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def manifest_of(layout: Path, tag: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(blob_path(layout, tags_of(layout)[tag]).read_bytes())
    return data


def layer_digests(layout: Path, tag: str) -> list[str]:
    return [layer["digest"] for layer in manifest_of(layout, tag)["layers"]]


def write_raw_layout(root: Path, tag: str, blobs: Sequence[tuple[str, bytes]]) -> list[str]:
    """A layout whose layers are ``(media type, blob bytes)`` stored exactly as given.

    Digests and sizes in the manifest match the bytes: only their content is broken.
    Returns the layer digests.
    """
    write_oci_layout(root, tag, [data for _, data in blobs], compression="none")
    manifest = manifest_of(root, tag)
    for layer, (media_type, _) in zip(manifest["layers"], blobs, strict=True):
        layer["mediaType"] = media_type
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    manifest_digest = sha256_digest(manifest_bytes)
    blob_path(root, manifest_digest).write_bytes(manifest_bytes)
    index = json.loads((root / "index.json").read_bytes())
    for entry in index["manifests"]:
        if entry["annotations"][REF_NAME_ANNOTATION] == tag:
            entry["digest"] = manifest_digest
            entry["size"] = len(manifest_bytes)
    (root / "index.json").write_bytes(json.dumps(index, indent=2, sort_keys=True).encode())
    return [layer["digest"] for layer in manifest["layers"]]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the workspace ----------------------------------------------------------------------


@dataclass
class Workspace:
    """``tmp_path`` laid out as: the source layout, the Ketch destination layouts, the
    unpack destination, and a sentinel directory that must stay empty."""

    root: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def src(self) -> Path:  # the hostile OCI source layout
        return self.root / "src"

    @property
    def dst(self) -> Path:  # Ketch destination, holding a good image before a failed convert
        return self.root / "dst"

    @property
    def fresh(self) -> Path:  # Ketch destination that did not exist before the convert
        return self.root / "fresh"

    @property
    def benign(self) -> Path:  # OCI source of the good image
        return self.root / "benign"

    @property
    def unpack_parent(self) -> Path:
        return self.root / "out"

    @property
    def dest(self) -> Path:  # ``ketch unpack`` destination
        return self.unpack_parent / "rootfs"

    @property
    def sentinel(self) -> Path:
        return self.root / "sentinel"

    @property
    def expected(self) -> Path:  # a hand-made tree to compare an unpacked one with
        return self.root / "expected"

    def run(self, *argv: str) -> Result:
        return ketch(self.capsys, *argv)

    # -- convert ----------------------------------------------------------------------

    def convert_ok(self) -> None:
        result = self.run("convert", f"oci:{self.src}:{TAG}", f"oci:{self.dst}:{TAG}")
        assert result.code == 0, result.err
        assert result.err == ""

    def convert_refused(self, code: int, *names: str) -> None:
        """Convert fails the same way into a fresh layout and into one holding a good image,
        moves no tag, and leaves the good image intact."""
        result = self.run("convert", f"oci:{self.src}:{TAG}", f"oci:{self.fresh}:{TAG}")
        assert_error(result, code, *names)
        if (self.fresh / "index.json").exists():
            assert tags_of(self.fresh) == {}

        write_oci_layout(
            self.benign,
            GOOD_TAG,
            [tar_bytes([dir("etc"), file("etc/hostname", b"good\n")])],
        )
        good = self.run("convert", f"oci:{self.benign}:{GOOD_TAG}", f"oci:{self.dst}:{GOOD_TAG}")
        assert good.code == 0, good.err
        index_before = (self.dst / "index.json").read_bytes()

        again = self.run("convert", f"oci:{self.src}:{TAG}", f"oci:{self.dst}:{TAG}")
        assert_error(again, code, *names)
        assert again.err == result.err.replace(str(self.fresh), str(self.dst))
        assert (self.dst / "index.json").read_bytes() == index_before
        assert list(tags_of(self.dst)) == [GOOD_TAG]
        check = self.run("check", f"oci:{self.dst}:{GOOD_TAG}")
        assert check.code == 0, check.out + check.err
        self.assert_contained()

    # -- read it back -----------------------------------------------------------------

    def inspect(self, path: str) -> dict[str, Any]:
        result = self.run("inspect", f"oci:{self.dst}:{TAG}", path, "--json")
        assert result.code == 0, result.err
        entry: dict[str, Any] = json.loads(result.out)
        return entry

    def unpack_ok(self) -> Path:
        check = self.run("check", f"oci:{self.dst}:{TAG}")
        assert check.code == 0, check.out + check.err
        self.unpack_parent.mkdir(exist_ok=True)
        result = self.run("unpack", f"oci:{self.dst}:{TAG}", str(self.dest))
        assert result.code == 0, result.err
        self.assert_contained()
        return self.dest

    # -- nothing outside the destinations ---------------------------------------------

    def assert_contained(self) -> None:
        assert self.sentinel.is_dir()
        assert list(self.sentinel.iterdir()) == []
        allowed = {"src", "dst", "fresh", "benign", "out", "sentinel", "expected"}
        assert {p.name for p in self.root.iterdir()} <= allowed
        if self.unpack_parent.exists():
            # The destination at most: no staging directory, nothing beside it.
            assert {p.name for p in self.unpack_parent.iterdir()} <= {self.dest.name}
        inside = {self.dst, self.fresh, self.dest, self.expected}
        for directory, dirnames, filenames in os.walk(self.root):
            here = Path(directory)
            dirnames[:] = [d for d in dirnames if here / d not in inside]
            stray = (set(dirnames) | set(filenames)) & HOSTILE_NAMES
            assert not stray, f"{sorted(stray)} written in {here}, outside the destinations"
        for ancestor in self.dest.parents:
            for name in HOSTILE_NAMES - {"etc", "passwd"}:
                assert not (ancestor / name).exists(), f"{ancestor / name} written"


@pytest.fixture
def ws(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Workspace]:
    for probe in HOST_PROBES:
        assert not probe.exists(), f"{probe} exists before the test: expected absent"
    passwd_before = sha256_file(HOST_PASSWD)
    passwd_mtime = HOST_PASSWD.stat().st_mtime_ns
    workspace = Workspace(tmp_path, capsys)
    workspace.sentinel.mkdir()
    yield workspace
    workspace.assert_contained()
    for probe in HOST_PROBES:
        assert not probe.exists(), f"{probe} was written on the host"
    assert sha256_file(HOST_PASSWD) == passwd_before
    assert HOST_PASSWD.stat().st_mtime_ns == passwd_mtime


def regular_file(path: Path) -> bytes:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode), f"{path}: expected a regular file, found {oct(st.st_mode)}"
    return path.read_bytes()


# -- confined paths ---------------------------------------------------------------------


def test_dotdot_path_is_confined_to_the_root(ws: Workspace) -> None:
    write_oci_layout(ws.src, TAG, [tar_bytes([file(f"../../{ESCAPE}", b"confined\n")])])
    ws.convert_ok()
    assert ws.inspect(f"/{ESCAPE}")["type"] == "file"
    dest = ws.unpack_ok()
    assert regular_file(dest / ESCAPE) == b"confined\n"
    assert sorted(os.listdir(dest)) == [ESCAPE]


def test_absolute_path_is_confined_to_the_root(ws: Workspace) -> None:
    write_oci_layout(ws.src, TAG, [tar_bytes([file(f"/{ABS_DIR}/file", b"abs\n")])])
    ws.convert_ok()
    assert ws.inspect(f"/{ABS_DIR}")["type"] == "dir"
    assert ws.inspect(f"/{ABS_DIR}/file")["size"] == 4
    dest = ws.unpack_ok()
    assert regular_file(dest / ABS_DIR / "file") == b"abs\n"
    assert sorted(os.listdir(dest)) == [ABS_DIR]


def test_symlink_parent_to_etc_lands_in_the_images_etc(ws: Workspace) -> None:
    layer = tar_bytes([symlink("evil", "/etc"), file("evil/passwd", PASSWD)])
    write_oci_layout(ws.src, TAG, [layer])
    ws.convert_ok()
    evil = ws.inspect("/evil")
    assert (evil["type"], evil["target"]) == ("symlink", "/etc")
    assert ws.inspect("/etc/passwd")["size"] == len(PASSWD)
    dest = ws.unpack_ok()
    assert os.readlink(dest / "evil") == "/etc"
    assert regular_file(dest / "etc" / "passwd") == PASSWD
    assert sorted(os.listdir(dest)) == ["etc", "evil"]
    # The host's /etc/passwd is checked unchanged by the ws fixture.


def test_symlink_escaping_with_dotdot_is_confined(ws: Workspace) -> None:
    layer = tar_bytes([symlink("up", "../../../../tmp"), file(f"up/{TMP_FILE}", b"tmp\n")])
    write_oci_layout(ws.src, TAG, [layer])
    ws.convert_ok()
    assert ws.inspect(f"/tmp/{TMP_FILE}")["type"] == "file"
    dest = ws.unpack_ok()
    assert os.readlink(dest / "up") == "../../../../tmp"
    assert regular_file(dest / "tmp" / TMP_FILE) == b"tmp\n"
    assert sorted(os.listdir(dest)) == ["tmp", "up"]


@pytest.mark.parametrize("where", ["same layer", "lower layer"])
def test_hardlink_outside_the_root_is_confined(ws: Workspace, where: str) -> None:
    target = [dir("etc"), file("etc/passwd", PASSWD)]
    link = hardlink(f"../../{LINK}", "../../etc/passwd")
    layers = (
        [tar_bytes([*target, link])]
        if where == "same layer"
        else [tar_bytes(target), tar_bytes([link])]
    )
    write_oci_layout(ws.src, TAG, layers)
    ws.convert_ok()
    assert ws.inspect(f"/{LINK}")["nlink"] == 2
    assert ws.inspect(f"/{LINK}")["inode"] == ws.inspect("/etc/passwd")["inode"]
    dest = ws.unpack_ok()
    assert regular_file(dest / LINK) == PASSWD
    assert (dest / LINK).stat().st_ino == (dest / "etc" / "passwd").stat().st_ino
    assert sorted(os.listdir(dest)) == ["etc", LINK]


def test_hardlink_outside_the_root_from_a_deeper_directory_is_confined(ws: Workspace) -> None:
    # /a/b/c is numbered after /etc/passwd (the inode's first name, breadth-first).
    link = hardlink(f"../../a/b/c/{LINK}", "../../etc/passwd")
    write_oci_layout(ws.src, TAG, [tar_bytes([dir("etc"), file("etc/passwd", PASSWD), link])])
    ws.convert_ok()
    assert ws.inspect(f"/a/b/c/{LINK}")["inode"] == ws.inspect("/etc/passwd")["inode"]
    dest = ws.unpack_ok()  # runs `ketch check` first
    assert (dest / "a/b/c" / LINK).stat().st_ino == (dest / "etc" / "passwd").stat().st_ino


def test_hardlink_outside_the_root_to_a_path_the_image_lacks_is_refused(ws: Workspace) -> None:
    # The host has /etc/passwd; the image does not, so there is nothing to link to.
    layer = tar_bytes([dir("etc"), hardlink(f"../../{LINK}", "../../etc/passwd")])
    write_oci_layout(ws.src, TAG, [layer])
    ws.convert_refused(BAD_LAYER, "/etc/passwd", LINK)


# -- refused layers ---------------------------------------------------------------------


def test_hardlink_to_a_missing_target_is_refused(ws: Workspace) -> None:
    layer = tar_bytes([file("present", b"x"), hardlink("link", "missing")])
    write_oci_layout(ws.src, TAG, [layer])
    ws.convert_refused(BAD_LAYER, "/missing", "/link")


def test_refused_layer_leaves_no_temporary_blob(ws: Workspace) -> None:
    layer = tar_bytes([file("present", b"x" * 5000), hardlink("link", "missing")])
    write_oci_layout(ws.src, TAG, [layer])
    ws.convert_refused(BAD_LAYER, "/missing")
    for layout in (ws.fresh, ws.dst):
        leftovers = [p.name for p in (layout / "blobs" / "sha256").iterdir() if p.name[0] == "."]
        assert leftovers == [], f"{layout}: temporary files left behind"


@pytest.mark.parametrize("name", ["..", "etc/.."])
def test_whiteout_naming_dotdot_is_refused(ws: Workspace, name: str) -> None:
    lower = tar_bytes([dir("etc"), file("etc/hostname", b"lower\n")])
    upper = tar_bytes([whiteout(name)])
    assert b".wh..." in upper
    write_oci_layout(ws.src, TAG, [lower, upper])
    ws.convert_refused(BAD_LAYER, layer_digests(ws.src, TAG)[1])


def test_whiteouts_hide_lower_layers_only(ws: Workspace) -> None:
    # image-spec layer.md: a whiteout or an opaque marker hides lower layers only; an entry
    # of the same layer stays, whatever the tar order (umoci agrees).
    lower = tar_bytes([dir("d"), file("d/old", b"old\n"), file("gone", b"lower\n")])
    upper = tar_bytes(
        [
            dir("d", mode=0o700, uid=7, mtime_ns=5_000_000_000),
            opaque("d"),
            file("d/new", b"new\n"),
            symlink("s", "d/new"),
            whiteout("s"),
            whiteout("gone"),
        ]
    )
    write_oci_layout(ws.src, TAG, [lower, upper])
    ws.convert_ok()
    d = ws.inspect("/d")
    assert (d["mode"], d["uid"], d["mtime"]) == ("0700", 7, "5.000000000")
    assert ws.inspect("/s")["target"] == "d/new"
    dest = ws.unpack_ok()
    assert sorted(os.listdir(dest)) == ["d", "s"]
    assert os.listdir(dest / "d") == ["new"]
    st = (dest / "d").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o700, 7, 5_000_000_000)
    assert os.readlink(dest / "s") == "d/new"


def _incompressible(n: int) -> bytes:
    return garbage(n, seed=7)


@pytest.mark.parametrize(
    ("media_type", "kind", "cut"),
    [
        pytest.param(GZIP, "gzip", 0.5, id="gzip-half"),
        pytest.param(GZIP, "gzip", 0.99, id="gzip-trailer"),
        pytest.param(ZSTD, "zstd", 0.5, id="zstd-half"),
        pytest.param(TAR, "none", 0.5, id="tar-mid-data"),
    ],
)
def test_truncated_layer_is_refused(ws: Workspace, media_type: str, kind: str, cut: float) -> None:
    tar = tar_bytes([file("a", _incompressible(64 << 10)), file("b", _incompressible(64 << 10))])
    blob = compress(tar, kind)  # type: ignore[arg-type]
    [digest] = write_raw_layout(ws.src, TAG, [(media_type, truncate(blob, int(len(blob) * cut)))])
    ws.convert_refused(BAD_LAYER, digest)


def test_plain_tar_truncated_inside_a_header_is_refused(ws: Workspace) -> None:
    tar = tar_bytes([file("a", b"A" * 100, mtime_ns=0), file("b", b"B" * 100)], format="ustar")
    # ustar: a's header, a's data block, b's header at 1024: cut b's header in half.
    [digest] = write_raw_layout(ws.src, TAG, [(TAR, truncate(tar, 1024 + 256))])
    ws.convert_refused(BAD_LAYER, digest)


@pytest.mark.parametrize(
    "entries",
    [
        # over: a claims 2 blocks, so b's header is read as a's data, b's data as a header
        pytest.param([file("a", b"A" * 100, size_override=600), file("b", b"B" * 100)], id="over"),
        # under: a claims 1 block, so a's second data block is read as a header
        pytest.param([file("a", b"A" * 1000, size_override=100), file("b", b"B")], id="under"),
        # over: a claims 2 blocks, so b's header is skipped and b's zero data block read as
        # the end of the archive, though c's header follows it
        pytest.param(
            [file("a", b"A" * 100, size_override=600), file("b", bytes(512)), file("c", b"C")],
            id="over-onto-zeros",
        ),
        # over, past the end of the archive
        pytest.param([file("a", b"A" * 100, size_override=64 << 10)], id="over-past-end"),
    ],
)
def test_tar_header_lying_about_its_size_is_refused(ws: Workspace, entries: list[TarEntry]) -> None:
    write_oci_layout(ws.src, TAG, [tar_bytes(entries, format="ustar")])
    ws.convert_refused(BAD_LAYER, layer_digests(ws.src, TAG)[0])


def test_file_of_10mb_claiming_20mb_is_refused(ws: Workspace) -> None:
    data = bytes(range(256)) * (10 << 20 >> 8)
    layer = tar_bytes([file("big", data, size_override=20 << 20)])
    write_oci_layout(ws.src, TAG, [layer], compression="zstd")
    ws.convert_refused(BAD_LAYER, layer_digests(ws.src, TAG)[0], "big")


@pytest.mark.parametrize(
    ("media_type", "blob"),
    [
        pytest.param(GZIP, garbage(4096), id="gzip"),
        pytest.param(ZSTD, garbage(4096), id="zstd"),
        pytest.param(TAR, garbage(4096), id="tar"),
        pytest.param(GZIP, compress(garbage(4096), "gzip"), id="gzip-of-garbage"),
        pytest.param(TAR, garbage(100), id="tar-short"),
    ],
)
def test_garbage_instead_of_a_tar_is_refused(ws: Workspace, media_type: str, blob: bytes) -> None:
    [digest] = write_raw_layout(ws.src, TAG, [(media_type, blob)])
    ws.convert_refused(BAD_LAYER, digest)


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param([[file("f", b"x"), file("f/x", b"y")]], id="same-layer"),
        pytest.param([[file("f", b"x")], [file("f/x", b"y")]], id="upper-layer"),
        pytest.param([[file("f", b"x"), symlink("l", "f"), file("l/x", b"y")]], id="via-symlink"),
        pytest.param([[file("f", b"x"), dir("f/d")]], id="dir-under-file"),
    ],
)
def test_path_through_a_regular_file_is_refused(
    ws: Workspace, layers: list[list[TarEntry]]
) -> None:
    write_oci_layout(ws.src, TAG, [tar_bytes(entries) for entries in layers])
    ws.convert_refused(BAD_LAYER, "/f/x", "/l/x", "/f/d")


@pytest.mark.parametrize("damage", ["other-layer", "flipped-data-byte", "flipped-gzip-byte"])
def test_layer_not_matching_its_digest_is_refused(ws: Workspace, damage: str) -> None:
    content = _incompressible(8 << 10)
    tar = tar_bytes([file("a", content)])
    if damage == "flipped-data-byte":
        write_oci_layout(ws.src, TAG, [tar], compression="none")
    else:
        write_oci_layout(ws.src, TAG, [tar])
    [digest] = layer_digests(ws.src, TAG)
    path = blob_path(ws.src, digest)
    blob = bytearray(path.read_bytes())
    if damage == "other-layer":
        blob = bytearray(compress(tar_bytes([file("a", content[::-1])]), "gzip"))
    elif damage == "flipped-data-byte":
        blob[512 + 4000] ^= 0xFF  # inside a's data: the tar still parses
    else:
        blob[len(blob) // 2] ^= 0xFF  # inside the deflate stream
    path.write_bytes(bytes(blob))
    ws.convert_refused(INTEGRITY, digest)


UNKNOWN_MEDIA_TYPE = "application/vnd.example.layer.v1.tar+lz4"


def test_unknown_layer_media_type_is_refused(ws: Workspace) -> None:
    layer = compress(tar_bytes([file("a", b"a")]), "gzip")
    blobs = [(GZIP, layer), (UNKNOWN_MEDIA_TYPE, layer + b"\n")]
    [digest] = write_raw_layout(ws.src, TAG, blobs)[1:]
    ws.convert_refused(UNSUPPORTED, digest, UNKNOWN_MEDIA_TYPE)


def test_unknown_layer_media_type_error_names_the_digest(ws: Workspace) -> None:
    layer = compress(tar_bytes([file("a", b"a")]), "gzip")
    blobs = [(GZIP, layer), (UNKNOWN_MEDIA_TYPE, layer + b"\n")]
    [digest] = write_raw_layout(ws.src, TAG, blobs)[1:]
    ws.convert_refused(UNSUPPORTED, digest)


def test_damage_breaking_the_tar_is_reported_as_a_digest_mismatch(ws: Workspace) -> None:
    tar = tar_bytes([file("a", b"a" * 100)], format="ustar")
    write_oci_layout(ws.src, TAG, [tar], compression="none")
    [digest] = layer_digests(ws.src, TAG)
    path = blob_path(ws.src, digest)
    blob = bytearray(path.read_bytes())
    blob[148] ^= 0x01  # a's header checksum: the tar no longer parses
    path.write_bytes(bytes(blob))
    ws.convert_refused(INTEGRITY, digest)


# -- accepted layers --------------------------------------------------------------------


MTIME_NS = DEFAULT_MTIME_NS
TOOL = bytes(range(256)) * (2560 << 10 >> 8)  # 2.5 MiB: three chunks at the default 1 MiB


def _positive_entries() -> list[TarEntry]:
    return [
        dir("bin", mtime_ns=MTIME_NS),
        file("bin/tool", TOOL, mode=0o4755, mtime_ns=MTIME_NS),
        hardlink("bin/tool2", "bin/tool"),
        symlink("bin/sh", "tool", mtime_ns=MTIME_NS),
        dir("etc", mode=0o750, mtime_ns=MTIME_NS),
        file("etc/hosts", b"127.0.0.1 localhost\n", mode=0o600, uid=1000, gid=100),
        file("etc/empty", b"", mtime_ns=MTIME_NS),
    ]


def _make_expected(root: Path) -> None:
    """The tree :func:`_positive_entries` describes, made by hand."""
    ns = (MTIME_NS, MTIME_NS)
    root.mkdir()
    (root / "bin").mkdir()
    (root / "etc").mkdir()
    (root / "bin" / "tool").write_bytes(TOOL)
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool2")
    os.symlink("tool", root / "bin" / "sh")
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    os.chown(root / "etc" / "hosts", 1000, 100)
    os.chmod(root / "etc" / "hosts", 0o600)
    (root / "etc" / "empty").write_bytes(b"")
    os.chmod(root / "etc" / "empty", 0o644)
    os.chmod(root / "etc", 0o750)
    for path in ("bin/tool", "bin/sh", "etc/hosts", "etc/empty", "bin", "etc"):
        os.utime(root / path, ns=ns, follow_symlinks=False)


@pytest.mark.parametrize("kind", ["zstd", "none", "gzip"])
def test_well_formed_layer_unpacks_as_expected(ws: Workspace, kind: str) -> None:
    write_oci_layout(ws.src, TAG, [tar_bytes(_positive_entries())], compression=kind)  # type: ignore[arg-type]
    ws.convert_ok()
    assert manifest_of(ws.src, TAG)["layers"][0]["mediaType"] == LAYER_MEDIA_TYPES[kind]
    dest = ws.unpack_ok()
    _make_expected(ws.expected)
    assert [str(d) for d in compare_trees(ws.expected, dest, ignore_dir_mtime=True)] == []


@pytest.mark.parametrize("media_type", [TAR, GZIP, ZSTD])
def test_empty_layer_is_accepted(ws: Workspace, media_type: str) -> None:
    lower = compress(tar_bytes([dir("etc", mtime_ns=MTIME_NS)]), "gzip")
    upper = compress(tar_bytes([file("etc/hosts", b"h\n", mtime_ns=MTIME_NS)]), "gzip")
    write_raw_layout(ws.src, TAG, [(GZIP, lower), (media_type, b""), (GZIP, upper)])
    ws.convert_ok()
    dest = ws.unpack_ok()
    assert regular_file(dest / "etc" / "hosts") == b"h\n"
    assert sorted(os.listdir(dest)) == ["etc"]


# -- unpack safety ----------------------------------------------------------------------


def _benign_image(ws: Workspace) -> None:
    write_oci_layout(ws.src, TAG, [tar_bytes([dir("etc"), file("etc/hostname", b"benign\n")])])
    ws.convert_ok()


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(directory) / name
            out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def test_unpack_refuses_unsafe_destinations(ws: Workspace) -> None:
    _benign_image(ws)
    image = f"oci:{ws.dst}:{TAG}"

    # DEST exists and is not empty: refused, nothing changed.
    ws.dest.mkdir(parents=True)
    (ws.dest / "keep").write_bytes(b"mine\n")
    (ws.dest / "sub").mkdir()
    before = _snapshot(ws.dest)
    assert_error(ws.run("unpack", image, str(ws.dest)), USAGE, str(ws.dest))
    assert _snapshot(ws.dest) == before
    assert sorted(os.listdir(ws.unpack_parent)) == ["rootfs"]

    # DEST's parent is missing: refused, nothing created.
    missing = ws.unpack_parent / "missing" / "rootfs"
    assert_error(ws.run("unpack", image, str(missing)), USAGE, str(missing))
    assert not missing.parent.exists()
    assert sorted(os.listdir(ws.unpack_parent)) == ["rootfs"]

    # DEST is a regular file, or a symlink to an empty directory: refused, untouched.
    (ws.dest / "keep").unlink()
    (ws.dest / "sub").rmdir()
    ws.dest.rmdir()
    ws.dest.write_bytes(b"a file\n")
    assert_error(ws.run("unpack", image, str(ws.dest)), USAGE, str(ws.dest))
    assert ws.dest.read_bytes() == b"a file\n"
    ws.dest.unlink()
    ws.dest.symlink_to(ws.sentinel)
    assert_error(ws.run("unpack", image, str(ws.dest)), USAGE, str(ws.dest))
    assert os.readlink(ws.dest) == str(ws.sentinel)
    ws.dest.unlink()
    assert sorted(os.listdir(ws.unpack_parent)) == []

    # An empty DEST is fine.
    ws.dest.mkdir()
    ws.unpack_ok()
    assert regular_file(ws.dest / "etc" / "hostname") == b"benign\n"


def test_failed_unpack_leaves_no_half_tree(ws: Workspace) -> None:
    entries = [dir("a"), file("a/one", b"1" * 5000), file("z", _incompressible(3 << 20))]
    write_oci_layout(ws.src, TAG, [tar_bytes(entries)])
    ws.convert_ok()
    # Damage the data blob near its end: "a/one" unpacks, then "z" fails its digest.
    summary = json.loads(ws.run("inspect", f"oci:{ws.dst}:{TAG}", "--json").out)
    [blob] = summary["blobs"]
    path = blob_path(ws.dst, blob["digest"])
    data = bytearray(path.read_bytes())
    data[-(100 << 10)] ^= 0xFF
    path.write_bytes(bytes(data))
    ws.unpack_parent.mkdir()
    result = ws.run("unpack", f"oci:{ws.dst}:{TAG}", str(ws.dest))
    assert_error(result, INTEGRITY, blob["digest"], "/z")
    assert not ws.dest.exists() and not ws.dest.is_symlink()
    assert os.listdir(ws.unpack_parent) == []
