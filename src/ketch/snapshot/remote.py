"""Ketch layers as remote snapshots: recognised by their labels, mounted lazily with FUSE.

A Prepare carrying ``containerd.io/snapshot.ref`` (the chain ID containerd wants) and the
``containerd.io/snapshot/ketch.layer`` label (from the converter's layer annotations) is a
Ketch layer: no download. A data-blob layer is an empty committed snapshot; the bootstrap
layer (the top one) is a committed snapshot whose dir is a lazy FUSE mount of the image,
so the container's overlay has it as its nearest lower.

The mount is made by ``ketch mount`` run as its own process, which goes through the
daemon launcher (``ketch.daemon.launcher``: the node service if one runs, else a detached
daemon): never a fork of this process, whose gRPC threads are running. The daemon lives
on after a snapshotter restart, and is stopped when the snapshot is removed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from ketch.daemon.launcher import unmount
from ketch.errors import NotFoundError
from ketch.image import layout
from ketch.snapshot.metadata import InvalidArgumentError, SnapshotError

LABEL_TARGET = "containerd.io/snapshot.ref"  # containerd's remote snapshot target
LABEL_KETCH_LAYER = layout.ANNOTATION_SNAPSHOT_KETCH_LAYER
LABEL_KETCH_BOOTSTRAP = layout.ANNOTATION_SNAPSHOT_KETCH_BOOTSTRAP
LABEL_KETCH_REF = "containerd.io/snapshot/ketch.ref"  # set by `ketch containerd pull`
LABEL_CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"  # set by the CRI plugin
MOUNT_TIMEOUT = 150.0  # seconds: the launcher's own 120 s, and a fresh interpreter


class UnavailableError(SnapshotError):
    """The image's registry or blobs cannot be reached: the mount failed."""

    code = "UNAVAILABLE"


def remote_kind(labels: Mapping[str, str]) -> str | None:
    """ "blob" or "bootstrap" for a Ketch layer asked for as a remote snapshot, else None."""
    if not labels.get(LABEL_TARGET):
        return None
    kind = labels.get(LABEL_KETCH_LAYER)
    if kind is None:
        return None
    if kind not in ("blob", "bootstrap"):
        raise InvalidArgumentError(f"label {LABEL_KETCH_LAYER}: unknown layer kind {kind!r}")
    return kind


def image_reference(labels: Mapping[str, str]) -> str:
    """The Ketch image to mount, as ``ketch mount`` takes it: a registry reference only.

    Labels can come from an image's own layer annotations (containerd copies those prefixed
    ``containerd.io/snapshot/``): a hostile image must not make this root process read a
    local layout (``oci:/...``) or a bucket it names."""
    ref = labels.get(LABEL_KETCH_REF)
    if not ref:
        cri = labels.get(LABEL_CRI_IMAGE_REF)
        if cri:
            ref = cri if "://" in cri else f"docker://{cri}"
    if ref:
        if not ref.startswith("docker://") or any(c in ref for c in " \t\n\0"):
            raise InvalidArgumentError(
                f"Ketch image reference {ref[:200]!r}: expected docker://HOST/REPO[:TAG|@DIGEST]"
            )
        return ref
    raise InvalidArgumentError(
        f"Ketch bootstrap layer {labels.get(LABEL_KETCH_BOOTSTRAP, '?')}: no image reference "
        f"(label {LABEL_KETCH_REF} or {LABEL_CRI_IMAGE_REF})"
    )


def mount_image(ref: str, mountpoint: Path, cache_dir: Path, bootstrap: str) -> None:
    """Mount ``ref`` lazily at ``mountpoint`` (``allow_other``, host mount namespace)."""
    command = [
        sys.executable,
        "-m",
        "ketch.cli.main",
        "mount",
        ref,
        str(mountpoint),
        "--cache-dir",
        str(cache_dir),
    ]
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=MOUNT_TIMEOUT,
            check=False,
            env=os.environ.copy(),
        )
    except subprocess.TimeoutExpired:
        unmount_image(mountpoint)
        raise UnavailableError(
            f"{ref} (bootstrap {bootstrap}): mount not ready in {MOUNT_TIMEOUT:.0f}s"
        ) from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        cause = lines[-1].removeprefix("ketch: error: ") if lines else f"exit {result.returncode}"
        raise UnavailableError(f"{ref} (bootstrap {bootstrap}): {cause}")


def unmount_image(mountpoint: Path) -> None:
    """Stop the daemon serving ``mountpoint`` and unmount it (nothing if not mounted)."""
    with contextlib.suppress(NotFoundError):
        unmount(mountpoint)
