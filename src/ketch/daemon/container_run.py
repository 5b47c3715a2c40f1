"""`ketch run`: a container on a lazily mounted image.

Reuses a live mount of the same image (same manifest digest) or starts a daemon for
it, then runs the image's command with runc on an overlayfs upper over the mount. With a
node service running, its daemon resolves the image and finds or makes the mount, so this
process never loads the registry client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketch.daemon.launcher import unmount
from ketch.daemon.state import claim_image_mount, state_dir
from ketch.errors import IntegrityError
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
    # asks the node service to mount the image (or find a live mount of it): the daemon's
    # ready info, or None when no service runs
    mount_via_service: Callable[[], dict[str, Any] | None] = lambda: None
    store_options: StoreOptions = field(default_factory=StoreOptions)


def _mount(request: RunRequest) -> tuple[Path, dict[str, Any], bool]:
    """The image's mountpoint, its config, and whether this run mounted it."""
    info = request.mount_via_service()
    if info is not None:
        config = info.get("config")
        if not isinstance(config, dict) or not isinstance(info.get("mountpoint"), str):
            raise IntegrityError(
                f"{request.image}: node service: expected a mountpoint and a config"
            )
        return Path(info["mountpoint"]), config, bool(info.get("started"))
    store, tag = open_store_with(request.image, request.store_options)
    descriptor, manifest, _ = store.resolve(tag)
    config = store.read_config(manifest)
    mountpoint, ours = claim_image_mount(descriptor.digest)
    if ours:
        request.start_mount(mountpoint)  # the daemon, a fork of this process, keeps the claim
    return mountpoint, config, ours


def run_in_image(request: RunRequest) -> int:
    """Mount (or reuse a mount), run the container, clean up; the container's exit code."""
    mountpoint, config, started = _mount(request)
    try:
        if not isinstance(config.get("config", {}), dict):
            raise IntegrityError(f"{request.image}: image config 'config': expected an object")
        container_id = request.name or new_container_id()
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
