"""`ketch run`: a container on a lazily mounted image.

The daemon resolves the image and finds a live mount of the same manifest or makes one
(``mount_daemon``); it answers with the mountpoint and the image config, so this process
never loads the registry client. Then the image's command runs with runc on an overlayfs
upper over the mount.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.config import DaemonConfig
from ketch.daemon.launcher import start_daemon, unmount
from ketch.daemon.state import state_dir
from ketch.errors import IntegrityError
from ketch.runtime.container import run_image
from ketch.runtime.runc import new_container_id


@dataclass(frozen=True, slots=True)
class RunRequest:
    daemon: DaemonConfig  # its mountpoint None: the image's own, or a live mount of it
    args: list[str] | None
    name: str | None
    remove_mount: bool


def run_in_image(request: RunRequest) -> int:
    """Mount (or reuse a mount), run the container, clean up; the container's exit code."""
    ready = start_daemon(request.daemon)
    mountpoint, config = ready.mountpoint, ready.config
    try:
        if not isinstance(config.get("config", {}), dict):
            raise IntegrityError(
                f"{request.daemon.image}: image config 'config': expected an object"
            )
        container_id = request.name or new_container_id()
        return run_image(
            mountpoint,
            config,
            state_dir=state_dir() / "containers" / container_id,
            args=request.args,
            container_id=container_id,
        )
    finally:
        if ready.started and request.remove_mount:
            unmount(mountpoint)
