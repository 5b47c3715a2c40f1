"""The public Python API and the ``ketch`` fsspec protocol against a real registry, as a
user who is not root, has no FUSE and cannot write any cache: the bytes of a file are
those umoci unpacks, and only that file's chunks are fetched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ketch
from tests.fixtures.fsspec_entry_point import REPO_ROOT, entry_point_dir
from tests.fixtures.registry import RunningRegistry, registry_plain_fixture  # noqa: F401

pytestmark = pytest.mark.integration

# Run by `nobody`: the API first, then fsspec (found through the entry point alone).
_SCRIPT = """
import json, sys
import fsspec
reference, url, path = sys.argv[1:]
with fsspec.open(url) as f:
    through_fsspec = f.read()
fs, _ = fsspec.core.url_to_fs(url)
import ketch
image = ketch.open_image(reference)
data = image.open(path).read()
print(json.dumps({
    "uid": __import__("os").getuid(),
    "data": data.hex(),
    "fsspec": through_fsspec.hex(),
    "fetched": image.fetched_bytes,
    "fsspec_fetched": fs.image.fetched_bytes,
    "cache_dir": None if image.cache_dir is None else str(image.cache_dir),
}))
"""


def _file_chunks_bytes(reference: str, path: str) -> int:
    """Compressed bytes of the chunks of ``path`` (symlinks followed), from the bootstrap."""
    with ketch.open_image(reference, ketch.ImageOptions(cache=False)) as image:
        bootstrap = image._image.bootstrap
        index = image._lookup(path, follow=True) - 1
        size = bootstrap.inode(index).size
        return sum(chunk.compressed_size for _, chunk in bootstrap.chunks_for_range(index, 0, size))


def test_a_user_without_root_or_fuse_reads_a_file_of_a_registry_image(
    corpus_oci: Path,
    registry_plain: RunningRegistry,
    umoci_unpacked: Callable[[Path, str], Path],
) -> None:
    reference = f"docker://{registry_plain.host}/public-api:base"
    summary = ketch.convert(f"oci:{corpus_oci}:base", reference)
    path = "/etc/os-release"  # a symlink to ../usr/lib/os-release in Debian
    expected = (umoci_unpacked(corpus_oci, "base") / path.lstrip("/")).read_bytes()

    # A home nobody can write, and a node cache configured that nobody can use.
    home = Path(tempfile.mkdtemp(prefix="ketch-api-home-"))
    node_cache = Path(tempfile.mkdtemp(prefix="ketch-api-node-cache-"))  # root's, 0700
    try:
        with entry_point_dir() as entry_points:
            found = _run_as_nobody(home, node_cache, entry_points, reference, path)
        assert sorted(p.name for p in home.iterdir()) == ["config.toml"]
        assert list(node_cache.iterdir()) == []
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(node_cache, ignore_errors=True)
    assert found["uid"] != 0
    assert bytes.fromhex(found["data"]) == expected
    assert bytes.fromhex(found["fsspec"]) == expected
    assert found["cache_dir"] is None  # neither cache usable: none, and still every byte

    # Only the file's chunks were fetched, by each reader: a tiny part of the image.
    needed = _file_chunks_bytes(reference, path)
    assert found["fetched"] == found["fsspec_fetched"] == needed
    assert needed * 1000 < summary.stored_bytes


def _run_as_nobody(
    home: Path, node_cache: Path, entry_points: Path, reference: str, path: str
) -> dict[str, Any]:
    """Run ``_SCRIPT`` as nobody, with ``home`` as HOME and a configuration naming
    ``node_cache``; what it printed."""
    os.chmod(home, 0o755)
    config = home / "config.toml"
    config.write_text(f'[cache]\ndir = "{node_cache}"\n')
    config.chmod(0o644)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "KETCH_CONFIG": str(config),
        "PYTHONPATH": f"{REPO_ROOT / 'src'}:{entry_points}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    url = f"ketch://{reference}/{path}"
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            sys.executable,
            "-c",
            _SCRIPT,
            reference,
            url,
            path,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found: dict[str, Any] = json.loads(result.stdout)
    return found
