"""One generated tree, twice: as files on ext4 (the baseline) and as a one-layer OCI
image that ``ketch convert`` turns into a Ketch image.

The tree is given as a list of ``Entry`` (directories before what they hold). The layer
is an uncompressed pax tar written entry by entry (``tarfile.add`` recurses once per
directory level, too deep for a 1,500-level tree), and the layout holds just what
``ketch convert`` reads: ``oci-layout``, ``index.json``, the manifest, config and layer.
On disk, the tree is written relative to directory descriptors, and removed without
recursion (``shutil.rmtree`` recurses once per level).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.context import oci, run_ketch


@dataclass(frozen=True, slots=True)
class Entry:
    path: tuple[str, ...]  # components under the root
    data: bytes | None = None  # None: a directory


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _tar(entries: Sequence[Entry], out: Path) -> None:
    with out.open("wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo("/".join(entry.path))
            if entry.data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                info.mode = 0o644
                tar.addfile(info, _Bytes(entry.data))


class _Bytes:
    """The file object ``tarfile.addfile`` reads one entry's data from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, size: int = -1) -> bytes:
        data, self._data = (self._data, b"") if size < 0 else (self._data[:size], self._data[size:])
        return data


def ketch_image(entries: Sequence[Entry], work: Path, name: str) -> str:
    """Convert ``entries`` to a Ketch image under ``work``; its reference."""
    layout = work / f"{name}-oci"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    tar_path = work / f"{name}.tar"
    _tar(entries, tar_path)
    layer = _blob(layout, tar_path.read_bytes())
    tar_path.unlink()
    config = _blob(
        layout,
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        ).encode(),
    )
    manifest = _blob(
        layout,
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
            }
        ).encode(),
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest,
                "annotations": {"org.opencontainers.image.ref.name": "src"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    image = oci(work / f"{name}-ketch", "img")
    run_ketch(["convert", oci(layout, "src"), image])
    return image


def write_tree(entries: Sequence[Entry], root: Path) -> None:
    """Write ``entries`` under ``root`` (on the work directory's filesystem: ext4)."""
    root.mkdir(parents=True)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    parent_path: tuple[str, ...] = ()
    parent = root_fd
    try:
        for entry in entries:
            wanted = entry.path[:-1]
            if wanted != parent_path:  # one directory open at a time, reached from the
                # last one when it lies below it (a deep chain), else from the root
                below = wanted[: len(parent_path)] == parent_path
                base, rest = (parent, wanted[len(parent_path) :]) if below else (root_fd, wanted)
                opened = _open_dir(base, rest)
                if parent != root_fd:
                    os.close(parent)
                parent, parent_path = opened, wanted
            name = entry.path[-1]
            if entry.data is None:
                os.mkdir(name, 0o755, dir_fd=parent)
                continue
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=parent)
            try:
                os.write(fd, entry.data)
            finally:
                os.close(fd)
    finally:
        if parent != root_fd:
            os.close(parent)
        os.close(root_fd)


def _open_dir(base: int, path: tuple[str, ...]) -> int:
    """A descriptor of ``path`` under ``base``, opened one name at a time."""
    fd = os.dup(base)
    for name in path:
        try:
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def remove_tree(root: Path) -> None:
    """``rm -rf root`` with a stack instead of recursion (a tree of any depth)."""
    if not root.exists():
        return
    stack: list[tuple[str, bool]] = [(str(root), False)]
    while stack:
        path, emptied = stack.pop()
        if emptied:
            os.rmdir(path)
            continue
        stack.append((path, True))
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)
