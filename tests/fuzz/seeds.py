"""Write the seed corpus of every fuzz target from real, valid instances.

    python -m tests.fuzz.seeds [CORPUS_DIR]     (default: tests/fuzz/corpus)

Seeds are made by the components that make them in real use: images built by Ketch's
own builder (bootstraps, blobs with each codec, manifests, configs, index.json), tar
layers written by Python's tarfile in each format and by GNU tar (sparse files in each
pax version), compressed as registries serve them, and the example configuration. Each
seed is small (the whole corpus is a few hundred KiB). A seed's name says what it is;
``regress-*`` files are inputs that once broke a parser, kept so that every run
replays them (they are not rewritten here).
"""

from __future__ import annotations

import io
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from ketch.format.bootstrap import Bootstrap
from ketch.format.records import DirentRecord
from ketch.storage.oci_layout_store import OciLayoutStore
from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import convert, open_image
from tests.fuzz.runner import CORPUS
from tests.fuzz.targets import seal_bootstrap

REPO = Path(__file__).resolve().parents[2]
_LAYER_PREFIX: dict[ol.Compression, bytes] = {
    "gzip": b"\x00\x01",
    "zstd": b"\x01\x01",
    "none": b"\x02\x01",
}


def _trimmed(tar: bytes) -> bytes:
    """A tar without the zero padding to a whole record: its end-of-archive blocks only."""
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.getmembers()
        end = archive.offset  # just past the last member's data
    return tar[:end] + bytes(1024)


def _write(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(_trimmed(data) if name.endswith(".tar") else data)


def _source_entries() -> list[ol.TarEntry]:
    text = b"".join(b"line %d of a small text file\n" % i for i in range(400))
    return [
        ol.dir("etc"),
        ol.file("etc/conf", b"k=v\n", xattrs={"user.tag": b"1", "security.capability": b"\1"}),
        ol.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", uid=0, gid=0),
        ol.file("usr/lib/" + "d" * 120 + "/text", text),
        ol.file("random", random.Random(0).randbytes(5000)),
        ol.file("empty"),
        ol.symlink("link", "etc/conf"),
        ol.hardlink("etc/again", "etc/conf"),
        ol.fifo("pipe"),
        ol.chardev("null", 1, 3),
        ol.dir("opt", mode=0o1777, uid=1000, gid=1000),
    ]


def bootstraps_blobs_manifests(corpus: Path, work: Path) -> None:
    """Images built by the builder: bootstrap, data blob, manifest, config, index.json."""
    source = work / "src"
    layers = [
        ol.tar_bytes(_source_entries()),
        ol.tar_bytes([ol.whiteout("random"), ol.opaque("opt"), ol.file("opt/new", b"n\n")]),
    ]
    ol.write_oci_layout(source, "src", layers)
    variants: dict[str, dict[str, Any]] = {
        "fixed-zstd-blake3": {"chunk_size": 4096, "compressor": "zstd", "digest": "blake3"},
        "cdc-lz4-sha256": {
            "chunker": "cdc",
            "chunk_size": 4096,
            "compressor": "lz4",
            "digest": "sha256",
        },
        "fixed-none-blake3": {"chunk_size": 8192, "compressor": "none"},
    }
    for name, options in variants.items():
        dest = work / name
        convert(source, "src", dest, prefetch_paths=["/etc/conf", "/usr"], workers=1, **options)
        image = open_image(dest)
        store = image.store
        if not isinstance(store, OciLayoutStore):
            raise TypeError(f"expected an OCI layout store, found {type(store).__name__}")
        layout = store.layout
        _write(corpus / "bootstrap", f"{name}.bootstrap", bytes(image.bootstrap.raw))
        if name == "fixed-zstd-blake3":
            _write(corpus / "bootstrap", "cycle.bootstrap", _with_cycle(image.bootstrap))
        for index, layer in enumerate(image.manifest.layers[:-1]):
            _write(corpus / "blob", f"{name}-{index}.blob", layout.read_blob(layer.digest))
        _write(corpus / "manifest", f"{name}.manifest.json", image.manifest.to_bytes())
        config = layout.read_blob(image.manifest.config.digest)
        _write(corpus / "manifest", f"{name}.config.json", config)
        _write(corpus / "manifest", f"{name}.index.json", (dest / "index.json").read_bytes())
    _write(corpus / "manifest", "source.index.json", (source / "index.json").read_bytes())
    descriptor = OciLayoutStore.open(source).layout.resolve_tag("src")
    _write(
        corpus / "manifest",
        "source.manifest.json",
        OciLayoutStore.open(source).layout.read_blob(descriptor.digest),
    )
    _write(corpus / "manifest", "multi-platform.index.json", _multi_platform_index(descriptor))


def _with_cycle(bootstrap: Bootstrap) -> bytes:
    """The bootstrap with /usr/lib's entry naming /usr instead of its own directory: a
    directory that names its own ancestor (sealed again, as a hostile author would)."""
    usr = bootstrap.resolve("/usr")
    lib = bootstrap.resolve("/usr/lib")
    record = bootstrap.inode(lib)
    data = bytearray(bootstrap.raw)
    sb = bootstrap.superblock
    for index in range(record.data_start, record.data_start + record.data_count):
        dirent = bootstrap.dirent(index)
        offset = sb.dirent_offset + index * DirentRecord.size_of
        data[offset : offset + DirentRecord.size_of] = DirentRecord(
            dirent.name_offset, dirent.name_size, usr
        ).pack()
    return seal_bootstrap(bytes(data))


def _multi_platform_index(descriptor: object) -> bytes:
    digest = getattr(descriptor, "digest", "sha256:" + "0" * 64)
    entries = [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1024,
            "platform": {"os": "linux", "architecture": arch, **({"variant": v} if v else {})},
        }
        for arch, v in (("amd64", None), ("arm64", "v8"), ("arm", "v7"))
    ]
    import json  # noqa: PLC0415

    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": entries,
    }
    return json.dumps(doc, indent=2).encode()


def tars(corpus: Path, work: Path) -> None:
    """A tar of each header form: ustar, GNU, pax (local and global), V7, sparse."""
    entries = [
        ol.dir("etc"),
        ol.file("etc/conf", b"k=v\n", mode=0o600, uid=1000, gid=100),
        ol.symlink("link", "etc/conf"),
        ol.hardlink("again", "etc/conf"),
        ol.fifo("pipe"),
        ol.chardev("null", 1, 3),
        ol.blockdev("loop0", 7, 0),
    ]
    formats: tuple[ol.TarFormat, ...] = ("ustar", "gnu", "pax")
    for fmt in formats:
        _write(corpus / "tar", f"{fmt}.tar", ol.tar_bytes(entries, format=fmt))
    long_name = "deep/" + "n" * 150 + "/file"
    _write(
        corpus / "tar",
        "gnu-longname-longlink.tar",
        ol.tar_bytes([ol.file(long_name, b"x"), ol.symlink("s" * 120, "t" * 130)], format="gnu"),
    )
    _write(
        corpus / "tar",
        "ustar-prefix.tar",
        ol.tar_bytes([ol.file("p" * 90 + "/" + "q" * 90, b"x")], format="ustar"),
    )
    _write(
        corpus / "tar",
        "gnu-base256.tar",
        ol.tar_bytes([ol.file("big-ids", b"x", uid=8**8, gid=8**9)], format="gnu"),
    )
    _write(
        corpus / "tar",
        "pax-xattrs-mtime.tar",
        ol.tar_bytes(
            [
                ol.file(
                    "x",
                    b"data",
                    xattrs={"user.a": b"\0\1", "trusted.b": b""},
                    mtime_ns=1_612_325_106_123_456_789,
                )
            ]
        ),
    )
    _write(
        corpus / "tar",
        "whiteouts.tar",
        ol.tar_bytes([ol.whiteout("gone"), ol.opaque("dir"), ol.dir("dir")]),
    )
    _write(corpus / "tar", "pax-global.tar", _pax_global())
    _write(corpus / "tar", "v7.tar", _v7())
    _write(corpus / "tar", "empty.tar", bytes(1024))
    _gnu_sparse(corpus / "tar", work)


def _pax_global() -> bytes:
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"uid": "7", "mtime": "1.5"}
    ) as tar:
        info = tarfile.TarInfo("global")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"gg"))
    return out.getvalue()


def _v7() -> bytes:
    """An old-style (V7) archive: no magic, type NUL, a directory by its trailing slash."""
    out = bytearray()
    for name, data in ((b"v7dir/", b""), (b"v7dir/file", b"v7 data\n")):
        header = bytearray(512)
        header[0 : len(name)] = name
        header[100:108] = b"0000644\0"
        header[108:116] = b"0000000\0"
        header[116:124] = b"0000000\0"
        header[124:136] = b"%011o\0" % len(data)
        header[136:148] = b"00000000000\0"
        header[148:156] = b" " * 8
        header[148:156] = b"%06o\0 " % sum(header)
        out += header + data + bytes(-len(data) % 512)
    return bytes(out + bytes(1024))


def _gnu_sparse(directory: Path, work: Path) -> None:
    """GNU tar's sparse files in pax form, versions 0.0, 0.1 and 1.0."""
    if shutil.which("tar") is None:
        raise RuntimeError("GNU tar is needed for the sparse seeds (apt-get install tar)")
    root = work / "sparse"
    root.mkdir()
    with (root / "sparse").open("wb") as f:
        for offset in (0, 16384, 40960):
            f.seek(offset)
            f.write(b"s" * 600)
        f.truncate(65536)
    for version in ("0.0", "0.1", "1.0"):
        data = subprocess.run(
            [
                "tar",
                "-C",
                str(root),
                "--format=posix",
                "--sparse",
                f"--sparse-version={version}",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
                "-",
                "sparse",
            ],
            check=True,
            capture_output=True,
        ).stdout
        _write(directory, f"gnu-sparse-{version}.tar", data)


def layer_streams(corpus: Path) -> None:
    """The layer_stream target's input: a compression byte, a flags byte, the blob."""
    layer = _trimmed(ol.tar_bytes(_source_entries()[:4]))
    for kind, prefix in _LAYER_PREFIX.items():
        data = ol.compress(layer, kind)
        _write(corpus / "layer_stream", f"{kind}.layer", prefix + data)
    two_frames = ol.compress(layer[:1024], "zstd") + ol.compress(layer[1024:], "zstd")
    _write(corpus / "layer_stream", "zstd-two-frames.layer", _LAYER_PREFIX["zstd"] + two_frames)


def configs(corpus: Path) -> None:
    _write(corpus / "config", "example.toml", (REPO / "docs" / "config.example.toml").read_bytes())
    _write(
        corpus / "config",
        "mirrors.toml",
        b'[cache]\ndir = "/var/cache/ketch"\nsize = "10G"\n[prefetch]\nfile = "/etc/list"\n'
        b"[registry]\ntls_verify = false\ntimeout = 5\nretries = 2\n"
        b'[[registry.mirrors]]\nurl = "http://127.0.0.1:5001"\nhost = "docker.io"\n'
        b'[s3]\nendpoint_url = "http://127.0.0.1:9000"\nregion = "us-east-1"\n',
    )


def prefetch_lists(corpus: Path) -> None:
    _write(
        corpus / "prefetch_list",
        "paths.list",
        b"# first-access order\n/bin/sh\n/etc/passwd\r\n\n  /usr/lib/x.so  \n#/skipped\n/caf\xc3\xa9\n",
    )


def main() -> int:
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bootstraps_blobs_manifests(corpus, work)
        tars(corpus, work)
    layer_streams(corpus)
    configs(corpus)
    prefetch_lists(corpus)
    total = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    print(f"{corpus}: {sum(1 for p in corpus.rglob('*') if p.is_file())} seeds, {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
