"""A file of several GB converts in bounded memory and reads back at any offset."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

from tests.fixtures import ocilayout as ol
from tests.fixtures.ketch import image_fs

SIZE = (5 << 30) + 12345  # past 2**32, so no 32-bit size or offset survives
TAIL = b"T" * 4096
_BLOCK = bytes(8 << 20)


def _big_gzip_layer(path: Path) -> None:
    """A tar+gzip layer holding one file of zeros ending in TAIL, streamed to disk."""
    info = tarfile.TarInfo("big/file")
    info.size = SIZE
    info.mode = 0o644
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    with path.open("wb") as out:
        out.write(compressor.compress(info.tobuf(format=tarfile.PAX_FORMAT)))
        left = SIZE - len(TAIL)
        while left > 0:
            n = min(left, len(_BLOCK))
            out.write(compressor.compress(_BLOCK[:n]))
            left -= n
        out.write(compressor.compress(TAIL + bytes((-SIZE) % 512) + bytes(1024)))
        out.write(compressor.flush())


# The peak RSS of this process's own memory: VmHWM, not getrusage's ru_maxrss, which Linux
# carries across exec, so that it would report the forking pytest worker's size when
# that is larger (it is, after the 100,000-file tests).
_CONVERT_AND_MEASURE = """
import json, re, sys
from ketch.cli.main import main
code = main(["convert", sys.argv[1], sys.argv[2], "--json"])
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())
print(json.dumps({"code": code, "max_rss_kib": int(hwm.group(1))}))
"""


def test_multi_gigabyte_file_in_bounded_memory(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tgz"
    _big_gzip_layer(layer)
    src = tmp_path / "src"
    digest = ol.write_oci_layout(src, "big", [b""], compression="none")
    # Swap the placeholder layer for the big one, streamed, and fix the manifest.
    manifest_path = src / "blobs" / "sha256" / digest[7:]
    manifest = json.loads(manifest_path.read_bytes())
    sha = hashlib.sha256()
    with layer.open("rb") as f:
        while block := f.read(1 << 20):
            sha.update(block)
    layer_digest = "sha256:" + sha.hexdigest()
    layer.rename(src / "blobs" / "sha256" / layer_digest[7:])
    manifest["layers"] = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": (src / "blobs" / "sha256" / layer_digest[7:]).stat().st_size,
        }
    ]
    data = json.dumps(manifest).encode()
    new_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (src / "blobs" / "sha256" / new_digest[7:]).write_bytes(data)
    index = json.loads((src / "index.json").read_bytes())
    index["manifests"][0]["digest"] = new_digest
    index["manifests"][0]["size"] = len(data)
    (src / "index.json").write_text(json.dumps(index))

    dest = tmp_path / "dst"
    result = subprocess.run(
        [sys.executable, "-c", _CONVERT_AND_MEASURE, f"oci:{src}:big", f"oci:{dest}:big"],
        check=True,
        capture_output=True,
        text=True,
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["code"] == 0, result.stderr
    assert measured["max_rss_kib"] < 400 * 1024, (
        f"convert used {measured['max_rss_kib']} KiB for a 5 GiB file"
    )

    fs = image_fs(dest, "big")
    ino = fs.resolve("/big/file")
    assert fs.getattr(ino).size == SIZE
    assert fs.read(ino, SIZE - len(TAIL) - 10, 10 + len(TAIL) + 100) == bytes(10) + TAIL
    assert fs.read(ino, (1 << 32) + 7, 1000) == bytes(1000)
