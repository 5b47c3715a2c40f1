"""Tests of the OCI layout generators, checked by Python's tarfile, skopeo and umoci.

The skopeo/umoci tests are marked ``integration`` (deselect with ``-m "not
integration"``); they fail, never skip, when the tools are missing.  umoci runs
as root here so that ownership is restored.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.fixtures import ocilayout as o
from tests.fixtures.ocilayout import (
    DEFAULT_MTIME_NS,
    LAYER_MEDIA_TYPES,
    TarEntry,
    compress,
    garbage,
    tar_bytes,
    truncate,
    write_oci_layout,
)
from tests.treecmp import compare_trees

S = 1_000_000_000
MTIME = 1_600_000_000 * S + 123_456_789


def sample_entries() -> list[TarEntry]:
    return [
        o.dir("etc", mode=0o750, uid=1, gid=2, mtime_ns=MTIME + 1),
        o.file("etc/hosts", b"127.0.0.1 localhost\n", mode=0o640, mtime_ns=MTIME + 2),
        o.file("bin/su", b"\x7fELF", mode=0o4755, uid=0, gid=0, mtime_ns=MTIME + 3),
        o.symlink("bin/sh", "busybox", mtime_ns=MTIME + 4),
        o.hardlink("etc/hosts.bak", "etc/hosts"),
        o.fifo("run/fifo", mtime_ns=MTIME + 5),
        o.chardev("dev/null", 1, 3),
        o.blockdev("dev/sda", 8, 0),
        o.file("attrs", b"a", xattrs={"user.k": b"v", "user.bin": b"\x00\xff\xfe"}),
        o.file(b"raw\xff\xfename", b"not utf-8"),
        o.dir("tmp", mode=0o1777, mtime_ns=MTIME + 6),
    ]


def read_tar(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(
        fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as tar:
        return tar.getmembers()


# ---------------------------------------------------------------- tar_bytes


def test_tar_round_trips_through_tarfile() -> None:
    data = tar_bytes(sample_entries())
    members = {m.name: m for m in read_tar(data)}
    assert set(members) == {
        "etc",
        "etc/hosts",
        "bin/su",
        "bin/sh",
        "etc/hosts.bak",
        "run/fifo",
        "dev/null",
        "dev/sda",
        "attrs",
        "raw\udcff\udcfename",
        "tmp",
    }
    etc = members["etc"]
    assert (etc.isdir(), etc.mode, etc.uid, etc.gid) == (True, 0o750, 1, 2)
    assert etc.pax_headers["mtime"] == "1600000000.123456790"
    hosts = members["etc/hosts"]
    assert (hosts.isreg(), hosts.mode, hosts.size) == (True, 0o640, 20)
    assert hosts.pax_headers["mtime"] == "1600000000.123456791"
    assert members["bin/su"].mode == 0o4755
    assert members["tmp"].mode == 0o1777
    assert (members["bin/sh"].issym(), members["bin/sh"].linkname) == (True, "busybox")
    bak = members["etc/hosts.bak"]
    assert (bak.islnk(), bak.linkname, bak.size) == (True, "etc/hosts", 0)
    assert members["run/fifo"].isfifo()
    null, sda = members["dev/null"], members["dev/sda"]
    assert (null.ischr(), null.devmajor, null.devminor) == (True, 1, 3)
    assert (sda.isblk(), sda.devmajor, sda.devminor) == (True, 8, 0)
    attrs = members["attrs"].pax_headers
    assert attrs["SCHILY.xattr.user.k"].encode("utf-8", "surrogateescape") == b"v"
    assert attrs["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape") == b"\x00\xff\xfe"
    assert members["attrs"].pax_headers["mtime"] == "1700000000.123456789"

    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as t:
        hosts_file = t.extractfile("etc/hosts")
        assert hosts_file is not None
        assert hosts_file.read() == b"127.0.0.1 localhost\n"
        raw = t.extractfile("raw\udcff\udcfename")
        assert raw is not None
        assert raw.read() == b"not utf-8"


def test_tar_names_are_written_as_given() -> None:
    members = read_tar(tar_bytes([o.file("../escape", b"e"), o.file("/abs/path", b"a")]))
    assert [m.name for m in members] == ["../escape", "/abs/path"]


def test_tar_is_deterministic() -> None:
    assert tar_bytes(sample_entries()) == tar_bytes(sample_entries())


def test_pax_mtime_has_nine_fraction_digits() -> None:
    whole = read_tar(tar_bytes([o.file("a", mtime_ns=5 * S)]))[0]
    assert whole.pax_headers["mtime"] == "5.000000000"
    negative = read_tar(tar_bytes([o.file("a", mtime_ns=-S - 1)]))[0]
    assert negative.pax_headers["mtime"] == "-1.000000001"


def test_gnu_and_ustar_formats() -> None:
    for fmt in ("gnu", "ustar"):
        [member] = read_tar(tar_bytes([o.file("a", b"x", mtime_ns=MTIME)], format=fmt))
        assert (member.mtime, member.pax_headers) == (1_600_000_000, {})
    with pytest.raises(ValueError, match="xattrs"):
        tar_bytes([o.file("a", xattrs={"user.a": b"1"})], format="gnu")


def test_size_override_makes_the_header_lie() -> None:
    data = tar_bytes([o.file("x", b"abc", size_override=2000), o.file("y", b"y")])
    honest = tar_bytes([o.file("x", b"abc"), o.file("y", b"y")])
    assert len(data) == len(honest)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        first = tar.next()  # the checksum was recomputed: the header parses
        assert first is not None
        assert (first.name, first.size) == ("x", 2000)
    short = tar_bytes([o.file("x", b"a" * 2000, size_override=3)])
    assert read_tar(short)[0].size == 3


def test_whiteout_and_opaque_names() -> None:
    assert o.whiteout("a/b/c").name == "a/b/.wh.c"
    assert o.whiteout("top").name == ".wh.top"
    assert o.whiteout("dir/sub/").name == "dir/.wh.sub"
    assert o.whiteout(b"d/\xff").name == b"d/.wh.\xff"
    assert o.opaque("a/b").name == "a/b/.wh..wh..opq"
    assert o.opaque("a/b/").name == "a/b/.wh..wh..opq"
    assert o.opaque("").name == ".wh..wh..opq"
    assert (o.whiteout("x").type, o.whiteout("x").data) == ("file", b"")


# ------------------------------------------------------- compress & broken data


def test_compress_round_trips() -> None:
    data = tar_bytes(sample_entries())
    gz = compress(data, "gzip")
    assert gzip.decompress(gz) == data
    assert gz[4:8] == b"\0\0\0\0"  # header mtime 0: deterministic
    assert compress(data, "gzip") == gz
    assert compress(data, "gzip", mtime=7)[4:8] == (7).to_bytes(4, "little")
    assert zstandard.ZstdDecompressor().decompress(compress(data, "zstd")) == data
    assert compress(data, "none") == data
    with pytest.raises(ValueError, match="compression"):
        compress(data, "lz4")  # type: ignore[arg-type]


def test_truncate_and_garbage() -> None:
    assert truncate(b"abcdef", 2) == b"ab"
    junk = garbage(4096)
    assert len(junk) == 4096
    assert junk == garbage(4096)
    assert junk != garbage(4096, seed=1)
    assert len(garbage(3)) == 3
    assert not junk.startswith(b"\x1f\x8b")  # gzip
    assert not junk.startswith(b"\x28\xb5\x2f\xfd")  # zstd
    with pytest.raises(tarfile.ReadError):
        read_tar(junk)


# ------------------------------------------------------------ write_oci_layout


def load_blob(root: Path, digest: str) -> bytes:
    data = (root / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def load_json_blob(root: Path, digest: str) -> Any:
    return json.loads(load_blob(root, digest))


def test_layout_structure(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    layers = [tar_bytes([o.file("a", b"1")]), tar_bytes([o.file("b", b"2")]), b""]
    digest = write_oci_layout(
        root, "v1", layers, compression=["gzip", "zstd", "none"], config={"Cmd": ["/x"]}
    )
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2
    [entry] = index["manifests"]
    assert entry["digest"] == digest
    assert entry["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
    assert entry["size"] == len(load_blob(root, digest))

    manifest = load_json_blob(root, digest)
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar",
    ]
    blobs = [load_blob(root, layer["digest"]) for layer in manifest["layers"]]
    assert [len(b) for b in blobs] == [layer["size"] for layer in manifest["layers"]]
    assert gzip.decompress(blobs[0]) == layers[0]
    assert zstandard.ZstdDecompressor().decompress(blobs[1]) == layers[1]
    assert blobs[2] == layers[2]

    config = load_json_blob(root, manifest["config"]["digest"])
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers],
    }
    assert config["config"]["Cmd"] == ["/x"]
    assert config["config"]["WorkingDir"] == "/"
    assert config["config"]["Env"][0].startswith("PATH=")


def test_layout_tags_share_a_layout(tmp_path: Path) -> None:
    root = tmp_path / "layout"
    one = write_oci_layout(root, "one", [tar_bytes([o.file("a", b"1")])])
    two = write_oci_layout(root, "two", [tar_bytes([o.file("a", b"2")])])
    again = write_oci_layout(root, "one", [tar_bytes([o.file("a", b"3")])])
    assert len({one, two, again}) == 3
    index = json.loads((root / "index.json").read_bytes())
    tags = {
        m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
        for m in index["manifests"]
    }
    assert tags == {"one": again, "two": two}


def test_layout_is_deterministic(tmp_path: Path) -> None:
    layers = [tar_bytes(sample_entries())]
    assert write_oci_layout(tmp_path / "a", "t", layers) == write_oci_layout(
        tmp_path / "b", "t", layers
    )


def test_layout_rejects_mismatched_compression_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 layers but 1"):
        write_oci_layout(tmp_path, "t", [b"", b""], compression=["gzip"])


# ------------------------------------------------------------ skopeo and umoci


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (apt-get install {name})")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    run(tool("umoci"), "unpack", "--image", f"{layout}:{tag}", str(bundle))
    return bundle / "rootfs"


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(LAYER_MEDIA_TYPES))
def test_skopeo_inspect_accepts_layout(tmp_path: Path, kind: o.Compression) -> None:
    layout = tmp_path / "layout"
    layers = [tar_bytes(sample_entries()), tar_bytes([o.whiteout("tmp")])]
    digest = write_oci_layout(layout, "latest", layers, compression=kind, config={"Env": ["A=1"]})
    write_oci_layout(layout, "other", [tar_bytes([o.file("x")])])
    info = json.loads(run(tool("skopeo"), "inspect", f"oci:{layout}:latest").stdout)
    assert info["Digest"] == digest
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")
    assert info["Env"] == ["A=1"]
    assert len(info["Layers"]) == 2
    raw = json.loads(run(tool("skopeo"), "inspect", "--raw", f"oci:{layout}:latest").stdout)
    assert [layer["mediaType"] for layer in raw["layers"]] == [LAYER_MEDIA_TYPES[kind]] * 2


def lstat_ns(path: Path) -> int:
    return os.lstat(path).st_mtime_ns


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["gzip", "none"])  # umoci 0.4.7 rejects tar+zstd layers
def test_umoci_unpacks_layout(tmp_path: Path, kind: o.Compression) -> None:
    layout = tmp_path / "layout"
    upper = [
        o.file("etc/hosts", b"::1 localhost\n", mode=0o600, mtime_ns=MTIME + 10),
        o.whiteout("run/fifo"),
        o.opaque("dev"),
    ]
    write_oci_layout(layout, "t", [tar_bytes(sample_entries()), tar_bytes(upper)], compression=kind)
    rootfs = umoci_unpack(layout, "t", tmp_path / "bundle")

    hosts = os.lstat(rootfs / "etc" / "hosts")
    assert (rootfs / "etc" / "hosts").read_bytes() == b"::1 localhost\n"
    assert (stat.S_IMODE(hosts.st_mode), hosts.st_mtime_ns) == (0o600, MTIME + 10)
    # the hard link was made in the lower layer; the upper layer replaced hosts
    assert (rootfs / "etc" / "hosts.bak").read_bytes() == b"127.0.0.1 localhost\n"
    etc = os.lstat(rootfs / "etc")
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o750, 1, 2)
    assert etc.st_mtime_ns == MTIME + 1  # directory mtimes are restored, to the ns
    su = os.lstat(rootfs / "bin" / "su")
    assert (stat.S_IMODE(su.st_mode), su.st_mtime_ns) == (0o4755, MTIME + 3)
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    assert lstat_ns(rootfs / "bin" / "sh") == MTIME + 4
    assert stat.S_IMODE(os.lstat(rootfs / "tmp").st_mode) == 0o1777
    assert lstat_ns(rootfs / "tmp") == MTIME + 6
    assert not (rootfs / "run" / "fifo").exists()
    assert os.listdir(rootfs / "dev") == []
    assert os.getxattr(rootfs / "attrs", "user.k") == b"v"
    assert os.getxattr(rootfs / "attrs", "user.bin") == b"\x00\xff\xfe"
    assert lstat_ns(rootfs / "attrs") == DEFAULT_MTIME_NS
    assert (Path(os.fsdecode(os.fsencode(rootfs) + b"/raw\xff\xfename"))).read_bytes() == (
        b"not utf-8"
    )


@pytest.mark.integration
def test_umoci_tree_matches_itself_via_treecmp(tmp_path: Path) -> None:
    # unpacking the same image twice gives equal trees except for the times umoci
    # takes from the clock (implicit parents made with "now")
    layout = tmp_path / "layout"
    write_oci_layout(layout, "t", [tar_bytes([o.dir("./"), *sample_entries()])])
    first = umoci_unpack(layout, "t", tmp_path / "b1")
    second = umoci_unpack(layout, "t", tmp_path / "b2")
    assert compare_trees(first, second, ignore_dir_mtime=True) == []
    hosts = os.lstat(first / "etc" / "hosts")
    assert hosts.st_nlink == 2
    assert hosts.st_ino == os.lstat(first / "etc" / "hosts.bak").st_ino
    null = os.lstat(first / "dev" / "null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISFIFO(os.lstat(first / "run" / "fifo").st_mode)


@pytest.mark.integration
class TestUmociReference:
    """How ``umoci unpack`` (the reference) treats edge cases; a converter must match."""

    def unpack(self, tmp_path: Path, *layers: list[TarEntry]) -> Path:
        layout = tmp_path / "layout"
        write_oci_layout(layout, "t", [tar_bytes(list(layer)) for layer in layers])
        return umoci_unpack(layout, "t", tmp_path / "bundle")

    def test_implicit_parents(self, tmp_path: Path) -> None:
        before = os.stat(tmp_path).st_mtime_ns
        rootfs = self.unpack(tmp_path, [o.file("a/b/c", b"c", mode=0o600, uid=5)])
        for parent in (rootfs / "a", rootfs / "a" / "b"):
            st = os.lstat(parent)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
            assert st.st_mtime_ns >= before  # the time of the unpack
        assert os.lstat(rootfs).st_mtime_ns >= before  # mkdir of a/ touched the root

    def test_root_without_entries_has_mtime_zero(self, tmp_path: Path) -> None:
        rootfs = self.unpack(tmp_path, [o.dir("d", mtime_ns=MTIME), o.file("d/x", b"x")])
        st = os.lstat(rootfs)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o755, 0, 0)
        assert lstat_ns(rootfs / "d") == MTIME  # restored after d/x was written

    def test_root_entry_sets_root_attributes(self, tmp_path: Path) -> None:
        rootfs = self.unpack(
            tmp_path, [o.file("x", b"x"), o.dir(".", mode=0o750, uid=7, mtime_ns=MTIME)]
        )
        st = os.lstat(rootfs)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o750, 7, MTIME)

    def test_dir_mtime_kept_when_upper_layer_changes_children(self, tmp_path: Path) -> None:
        rootfs = self.unpack(
            tmp_path,
            [
                o.dir("a", mtime_ns=MTIME),
                o.file("a/old", b"o"),
                o.dir("b", mtime_ns=MTIME + 1),
                o.file("b/gone", b"g"),
            ],
            [o.file("a/new", b"n"), o.whiteout("b/gone")],
        )
        assert (lstat_ns(rootfs / "a"), lstat_ns(rootfs / "b")) == (MTIME, MTIME + 1)

    def test_later_dir_entry_wins(self, tmp_path: Path) -> None:
        rootfs = self.unpack(
            tmp_path,
            [o.file("d/x", b"x"), o.dir("d", mode=0o711, mtime_ns=MTIME), o.dir("d", mode=0o700)],
        )
        st = os.lstat(rootfs / "d")
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o700, DEFAULT_MTIME_NS)

    def test_escaping_names_are_confined(self, tmp_path: Path) -> None:
        rootfs = self.unpack(tmp_path, [o.file("../escape", b"e"), o.file("/abs/path", b"a")])
        assert (rootfs / "escape").read_bytes() == b"e"
        assert (rootfs / "abs" / "path").read_bytes() == b"a"
        assert not (tmp_path / "bundle" / "escape").exists()

    def test_symlink_component_resolved_inside_rootfs(self, tmp_path: Path) -> None:
        rootfs = self.unpack(
            tmp_path,
            [o.symlink("link", "/etc"), o.symlink("up", "../../../../tmp")],
            [o.file("link/file", b"f"), o.file("up/pwned", b"p")],
        )
        assert os.readlink(rootfs / "link") == "/etc"
        assert (rootfs / "etc" / "file").read_bytes() == b"f"
        assert (rootfs / "tmp" / "pwned").read_bytes() == b"p"
        st = os.lstat(rootfs / "etc")
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)

    def test_hardlink_to_lower_layer(self, tmp_path: Path) -> None:
        rootfs = self.unpack(
            tmp_path,
            [o.file("lower", b"L", mode=0o640, uid=3, mtime_ns=MTIME)],
            [o.hardlink("link", "lower", mode=0o600, uid=4, mtime_ns=MTIME + 9)],
        )
        lower, link = os.lstat(rootfs / "lower"), os.lstat(rootfs / "link")
        assert lower.st_ino == link.st_ino
        assert lower.st_nlink == 2
        # the hard link's own header attributes are ignored
        assert (stat.S_IMODE(link.st_mode), link.st_uid, link.st_mtime_ns) == (0o640, 3, MTIME)

    def test_hardlink_to_missing_target_fails(self, tmp_path: Path) -> None:
        layout = tmp_path / "layout"
        write_oci_layout(
            layout,
            "t",
            [tar_bytes([o.file("a", b"a")]), tar_bytes([o.whiteout("a"), o.hardlink("b", "a")])],
        )
        result = subprocess.run(
            [tool("umoci"), "unpack", "--image", f"{layout}:t", str(tmp_path / "bundle")],
            check=False,
            capture_output=True,
            text=True,
        )
        assert result.returncode != 0
        assert "link: no such file or directory" in result.stderr

    def test_lying_size_within_the_block_is_not_detected(self, tmp_path: Path) -> None:
        rootfs = self.unpack(tmp_path, [o.file("x", b"abc", size_override=100), o.file("y", b"y")])
        assert (rootfs / "x").read_bytes() == b"abc" + b"\0" * 97
        assert (rootfs / "y").read_bytes() == b"y"
