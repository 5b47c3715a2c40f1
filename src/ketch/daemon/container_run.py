"""`ketch run`: a container on a lazily mounted image.

Reuses a live mount of the same image (same manifest digest) or starts a daemon for
it, then runs the image's command with runc on an overlayfs upper over the mount.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ketch.daemon.launcher import unmount
from ketch.daemon.state import all_records, state_dir
from ketch.errors import IntegrityError
from ketch.oci.manifest import load_json
from ketch.runtime.container import run_image
from ketch.runtime.runc import new_container_id
from ketch.storage.open import StoreOptions, open_store_with


@dataclass(slots=True)
class RunRequest:
    image: str
    args: list[str] | None
    name: str | None
    remove_mount: bool
    start_mount: Callable[[Path], int]  # starts a daemon for the image at a mountpoint
    store_options: StoreOptions = field(default_factory=StoreOptions)


def _live_mount(manifest_digest: str) -> Path | None:
    for record in all_records():
        if record.manifest_digest == manifest_digest and record.alive():
            return Path(record.mountpoint)
    return None


def run_in_image(request: RunRequest) -> int:
    """Mount (or reuse a mount), run the container, clean up; the container's exit code."""
    store, tag = open_store_with(request.image, request.store_options)
    descriptor, manifest, _ = store.resolve(tag)
    config = load_json(store.read_blob(manifest.config.digest, max_size=4 << 20), "image config")
    if not isinstance(config.get("config", {}), dict):
        raise IntegrityError(f"{request.image}: image config 'config': expected an object")
    mountpoint = _live_mount(descriptor.digest)
    started = mountpoint is None
    if mountpoint is None:
        mountpoint = state_dir() / "mnt" / descriptor.digest[7:19]
        mountpoint.mkdir(parents=True, exist_ok=True)
        request.start_mount(mountpoint)
    container_id = request.name or new_container_id()
    try:
        return run_image(
            mountpoint,
            config,
            state_dir=state_dir() / "containers" / container_id,
            args=request.args,
            container_id=container_id,
        )
    finally:
        if started and request.remove_mount:
            unmount(mountpoint)
