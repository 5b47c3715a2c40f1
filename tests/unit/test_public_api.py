"""The public Python API (``ketch.open_image``, ``Image``, its file objects) and the
``ketch`` fsspec protocol, on images built from small directories."""

from __future__ import annotations

import errno
import io
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

import ketch
from ketch.config import from_json, to_json
from ketch.errors import ChunkReadError, IntegrityError, NotFoundError, UsageError
from tests.fixtures import ocilayout as oci
from tests.fixtures.fsspec_entry_point import entry_point_dir
from tests.fixtures.ketch import build_dir
from tests.fixtures.ocilayout import tar_bytes, write_oci_layout

CHUNK = 16384
NO_CACHE = ketch.ImageOptions(cache=False)


def _data(size: int, seed: int) -> bytes:
    return bytes((i * 31 + seed + i // 251) % 256 for i in range(size))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    (root / "etc").mkdir()
    (root / "etc/os-release").write_bytes(b'NAME="Ketch"\nID=ketch\n')
    (root / "data").mkdir()
    (root / "data/big.bin").write_bytes(_data(5 * CHUNK + 123, 1))
    (root / "data/other.bin").write_bytes(_data(3 * CHUNK, 2))
    (root / "data/empty").write_bytes(b"")
    (root / "lib").symlink_to("data")
    (root / "escape").symlink_to("../../../../etc/os-release")
    (root / "absolute").symlink_to("/data/big.bin")
    (root / "loop").symlink_to("loop")
    (root / "dangling").symlink_to("/nowhere")
    return root


@pytest.fixture(scope="module")
def image_ref(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = tmp_path_factory.mktemp("layout") / "oci"
    build_dir(tree, layout, "t", chunk_size=CHUNK)
    return f"oci:{layout}:t"


@pytest.fixture
def image(image_ref: str) -> Iterator[ketch.Image]:
    with ketch.open_image(image_ref, NO_CACHE) as opened:
        yield opened


def test_public_names_are_curated() -> None:
    for name in ketch.__all__:
        assert getattr(ketch, name) is not None
    assert "open_image" in dir(ketch)
    with pytest.raises(AttributeError):
        _ = ketch.nothing_here


def test_read_seek_tell_readinto(image: ketch.Image, tree: Path) -> None:
    expected = (tree / "data/big.bin").read_bytes()
    with image.open("/data/big.bin") as f:
        assert isinstance(f, io.BufferedReader)
        assert isinstance(f.raw, io.RawIOBase)
        assert f.readable() and f.seekable() and not f.writable()
        assert f.name == "/data/big.bin"
        assert f.read(10) == expected[:10]
        assert f.tell() == 10
        assert f.seek(CHUNK - 5) == CHUNK - 5
        assert f.read(10) == expected[CHUNK - 5 : CHUNK + 5]
        assert f.seek(-7, os.SEEK_END) == len(expected) - 7
        assert f.read() == expected[-7:]
        assert f.read() == b""
        f.seek(3 * CHUNK)
        buffer = bytearray(CHUNK + 1)
        assert f.readinto(buffer) == CHUNK + 1
        assert bytes(buffer) == expected[3 * CHUNK : 4 * CHUNK + 1]
        f.seek(0)
        assert f.read() == expected
        f.seek(len(expected) + 100)
        assert f.read(5) == b""
        with pytest.raises(ValueError):
            f.seek(-1)
    assert f.closed
    with pytest.raises(ValueError):
        f.read()
    buffered = image.open("/data/other.bin")
    assert buffered.raw.read(5) == (tree / "data/other.bin").read_bytes()[:5]
    buffered.close()
    assert image.read_bytes("/data/empty") == b""
    text = io.TextIOWrapper(image.open("/etc/os-release"), encoding="utf-8")
    assert text.readline() == 'NAME="Ketch"\n'


def test_stat_listdir_walk(image: ketch.Image, tree: Path) -> None:
    info = image.stat("/data/big.bin")
    assert info.is_file() and info.type == "file"
    assert info.st_size == (tree / "data/big.bin").stat().st_size
    assert image.stat("data").is_dir()
    assert image.stat("/lib", follow_symlinks=False).is_symlink()
    assert image.stat("/lib").is_dir()
    assert image.readlink("/lib") == "data"
    assert image.listdir("/data") == ["big.bin", "empty", "other.bin"]
    assert image.listdir("/lib") == image.listdir("/data")
    walked = {path: (sorted(dirs), sorted(files)) for path, dirs, files in image.walk()}
    expected = {}
    for path, dirs, files in os.walk(tree):
        rel = "/" + os.path.relpath(path, tree).strip(".")
        links = [d for d in dirs if os.path.islink(os.path.join(path, d))]
        expected[rel.rstrip("/") or "/"] = (
            sorted(d for d in dirs if d not in links),
            sorted(files + links),
        )
    assert walked == expected
    pruned = []
    for path, dirs, _ in image.walk("/"):
        pruned.append(path)
        dirs[:] = [d for d in dirs if d != "data"]
    assert "/data" not in pruned


def test_symlinks_are_followed_inside_the_image(image: ketch.Image) -> None:
    release = image.read_bytes("/etc/os-release")
    assert image.read_bytes("/escape") == release  # ../../.. stops at the image's root
    assert image.read_bytes("/absolute") == image.read_bytes("/data/big.bin")
    assert image.read_bytes("/lib/other.bin") == image.read_bytes("/data/other.bin")
    assert image.read_bytes("/data/../../../etc/os-release") == release
    with pytest.raises(ketch.PathNotFoundError) as loop:
        image.open("/loop")
    assert loop.value.errno == errno.ELOOP
    with pytest.raises(FileNotFoundError):
        image.open("/dangling")
    assert image.exists("/escape") and not image.exists("/dangling")


def test_errors_are_the_exception_tree_and_oserrors(image: ketch.Image) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        image.open("/etc/missing")
    assert isinstance(missing.value, NotFoundError)
    assert missing.value.errno == errno.ENOENT
    assert missing.value.filename == "/etc/missing"
    assert missing.value.exit_code == 3
    assert "/etc/missing" in str(missing.value) and "\n" not in str(missing.value)
    copy = pickle.loads(pickle.dumps(missing.value))
    assert (type(copy), str(copy), copy.errno) == (ketch.PathNotFoundError, str(missing.value), 2)
    with pytest.raises(IsADirectoryError) as directory:
        image.open("/data")
    assert isinstance(directory.value, UsageError) and directory.value.errno == errno.EISDIR
    with pytest.raises(FileNotFoundError) as through:
        image.stat("/etc/os-release/x")
    assert through.value.errno == errno.ENOTDIR
    with pytest.raises(FileNotFoundError):
        image.listdir("/etc/os-release")


def _corrupt_chunk(ref: str, image: ketch.Image, path: str) -> None:
    """Flip one byte of the first chunk of ``path`` in its blob in the OCI layout."""
    layout = Path(ref.split(":")[1])
    bootstrap = image._image.bootstrap
    index = bootstrap.resolve(path)
    _, chunk = bootstrap.chunks_for_range(index, 0, 1)[0]
    blob = bootstrap.blob(chunk.blob).oci_digest
    blob_path = layout / "blobs/sha256" / blob.removeprefix("sha256:")
    data = bytearray(blob_path.read_bytes())
    data[chunk.compressed_offset + chunk.compressed_size // 2] ^= 0xFF
    blob_path.chmod(0o644)
    blob_path.write_bytes(bytes(data))


def test_a_corrupt_chunk_is_an_eio_oserror_never_bytes(tree: Path, tmp_path: Path) -> None:
    layout = tmp_path / "oci"
    build_dir(tree, layout, "t", chunk_size=CHUNK)
    ref = f"oci:{layout}:t"
    with ketch.open_image(ref, NO_CACHE) as image:
        _corrupt_chunk(ref, image, "/data/big.bin")
        f = image.open("/data/big.bin")
        with pytest.raises(OSError) as failed:
            f.read(100)
        assert isinstance(failed.value, ChunkReadError)
        assert isinstance(failed.value, IntegrityError) and failed.value.exit_code == 4
        assert failed.value.errno == errno.EIO
        assert "/data/big.bin" in str(failed.value)
        # The rest of the file, and other files, still read.
        f.seek(CHUNK)
        assert f.read(10) == (tree / "data/big.bin").read_bytes()[CHUNK : CHUNK + 10]
        assert image.read_bytes("/data/other.bin") == (tree / "data/other.bin").read_bytes()
        with pytest.raises(ChunkReadError):
            image.read_bytes("/data/big.bin")


def test_inspect_and_check(image: ketch.Image, tree: Path) -> None:
    summary = image.inspect()
    assert summary["manifest_digest"] == image.manifest_digest
    assert summary["root_digest"] == image.root_digest
    assert summary["reference"] == image.name
    entry = image.inspect("/data/big.bin")
    assert entry["size"] == (tree / "data/big.bin").stat().st_size
    assert len(entry["chunks"]) == 6
    seen: list[int] = []
    report = image.check(seen.append)
    assert isinstance(report, ketch.CheckReport) and report.ok
    assert sum(seen) == report.bytes > 0


def test_the_cache_serves_a_second_open(image_ref: str, tmp_path: Path) -> None:
    options = ketch.ImageOptions(cache_dir=tmp_path / "cache")
    with ketch.open_image(image_ref, options) as first:
        data = first.read_bytes("/data/big.bin")
        assert first.fetched_bytes > 0
    assert list((tmp_path / "cache/chunks").rglob("*"))
    assert list((tmp_path / "cache/bootstraps").iterdir())
    with ketch.open_image(image_ref, options) as second:
        assert second.read_bytes("/data/big.bin") == data
        assert second.fetched_bytes == 0


def test_a_user_cache_when_the_node_cache_is_not_configured_writable(
    image_ref: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = tmp_path / "node-cache-is-a-file"
    node.write_bytes(b"")
    config = tmp_path / "config.toml"
    config.write_text(f'[cache]\ndir = "{node}"\n')
    monkeypatch.setenv("KETCH_CONFIG", str(config))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with ketch.open_image(image_ref) as image:
        image.read_bytes("/etc/os-release")
        assert image.cache_dir == tmp_path / "xdg/ketch"
    assert list((tmp_path / "xdg/ketch/chunks").rglob("*"))
    # A node cache configured and writable is the one used.
    config.write_text(f'[cache]\ndir = "{tmp_path / "node"}"\n')
    with ketch.open_image(image_ref) as image:
        image.read_bytes("/etc/os-release")
        assert image.cache_dir == tmp_path / "node"
    assert list((tmp_path / "node/chunks").rglob("*"))
    # Neither usable: no cache at all, and still every byte.
    monkeypatch.setenv("XDG_CACHE_HOME", str(node / "below-a-file"))
    with ketch.open_image(image_ref) as image:
        assert image.read_bytes("/etc/os-release") == b'NAME="Ketch"\nID=ketch\n'


def test_image_options_are_settings_records() -> None:
    options = ketch.ImageOptions(cache_dir=Path("/tmp/c"), cache_size=1 << 30)
    assert from_json(ketch.ImageOptions, to_json(options), "options") == options
    with pytest.raises(UsageError):
        from_json(ketch.ImageOptions, {"cache_size": -1}, "options")


def test_convert(tmp_path: Path) -> None:
    release = b'NAME="Ketch"\n'
    layer = tar_bytes([oci.dir("etc"), oci.file("etc/os-release", release)])
    write_oci_layout(tmp_path / "src", "t", [layer])
    options = ketch.BuildOptions(chunk_size=CHUNK)
    summary = ketch.convert(f"oci:{tmp_path / 'src'}:t", f"oci:{tmp_path / 'dst'}:k", options)
    with ketch.open_image(f"oci:{tmp_path / 'dst'}:k", NO_CACHE) as image:
        assert image.manifest_digest == summary.manifest_digest
        assert image.read_bytes("/etc/os-release") == release


# -- fsspec ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    """The protocol registered from pyproject's entry point, by fsspec's own discovery."""
    with entry_point_dir() as directory:
        sys.path.append(str(directory))
        try:
            fsspec.process_entries()
            yield
        finally:
            sys.path.remove(str(directory))


def test_fsspec_filesystem(registered: None, image_ref: str, tree: Path) -> None:
    fs = fsspec.filesystem("ketch", image=image_ref, options=NO_CACHE)
    assert type(fs).__module__ == "ketch.api.fsspec_fs"
    assert fs.ls("/data", detail=False) == ["/data/big.bin", "/data/empty", "/data/other.bin"]
    entries = {entry["name"]: entry for entry in fs.ls("/")}
    assert entries["/data"]["type"] == "directory"
    assert entries["/lib"]["islink"] and entries["/lib"]["type"] == "directory"
    big = fs.info("/data/big.bin")
    assert (big["type"], big["size"]) == ("file", (tree / "data/big.bin").stat().st_size)
    assert fs.cat("/etc/os-release") == (tree / "etc/os-release").read_bytes()
    assert fs.cat_file("data/big.bin", 10, 20) == (tree / "data/big.bin").read_bytes()[10:20]
    assert fs.cat_file("/data/big.bin", -5) == (tree / "data/big.bin").read_bytes()[-5:]
    assert fs.isdir("/lib") and fs.isfile("/escape") and fs.exists("/etc")
    assert not fs.exists("/missing")
    with fs.open("/data/other.bin") as f:
        assert f.read() == (tree / "data/other.bin").read_bytes()
    with pytest.raises(FileNotFoundError):
        fs.info("/missing")
    with pytest.raises(FileNotFoundError):
        fs.open("/missing")
    with pytest.raises(IsADirectoryError):
        fs.cat("/etc")
    with pytest.raises(NotImplementedError):
        fs.open("/new", "wb")
    assert sorted(fs.find("/data")) == ["/data/big.bin", "/data/empty", "/data/other.bin"]
    assert pickle.loads(pickle.dumps(fs)).cat("/etc/os-release") == fs.cat("/etc/os-release")


def test_fsspec_urls(registered: None, image_ref: str, tree: Path) -> None:
    expected = (tree / "etc/os-release").read_bytes()
    with fsspec.open("ketch:///etc/os-release", image=image_ref, options=NO_CACHE) as f:
        assert f.read() == expected
    with fsspec.open(f"ketch://{image_ref}//etc/os-release", options=NO_CACHE) as f:
        assert f.read() == expected
    with fsspec.open(f"ketch://{image_ref}//etc/os-release", "rt", options=NO_CACHE) as t:
        assert t.read() == expected.decode()
    fs, path = fsspec.core.url_to_fs(f"ketch://{image_ref}//data/big.bin", options=NO_CACHE)
    assert (fs.image.reference, path) == (image_ref, "/data/big.bin")
