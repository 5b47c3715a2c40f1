"""A whole container run: overlay on the image's read-only root, bundle, runc, cleanup."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ketch.errors import StorageError
from ketch.runtime.bundle import write_bundle
from ketch.runtime.overlay import Overlay
from ketch.runtime.runc import Stdio, find_runc, new_container_id, run_container


def run_image(
    lower: Path,
    image_config: Mapping[str, Any],
    *,
    state_dir: Path,
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    hostname: str | None = None,
    container_id: str | None = None,
    runc: str = "runc",
    root: Path | None = None,
    stdin: Stdio = None,
    stdout: Stdio = None,
    stderr: Stdio = None,
    timeout: float | None = None,
) -> int:
    """Run the image whose root filesystem is the read-only ``lower``; its exit code.

    ``state_dir`` (made, and removed afterwards; it must not exist) holds the overlay's
    ``upper``/``work``/``merged`` and the ``bundle``. The hostname defaults to the
    container id. Arguments are as ``write_bundle`` and ``run_container``.
    """
    container_id = container_id or new_container_id()
    # runc refuses a rootfs path with a symlink in it: resolve the parents (the dir
    # itself does not exist yet).
    state_dir = Path(os.path.realpath(state_dir.absolute().parent)) / state_dir.name
    if state_dir.exists():
        raise StorageError(f"container state dir {state_dir}: expected none, found one")
    find_runc(runc)  # fail before mounting anything
    bundle = state_dir / "bundle"
    try:
        with Overlay(lower, state_dir) as overlay:
            write_bundle(
                bundle,
                overlay.merged,
                image_config,
                args=args,
                hostname=hostname or re.sub(r"[^A-Za-z0-9.-]", "-", container_id)[:63],
                env=env,
            )
            return run_container(
                bundle,
                container_id,
                runc=runc,
                root=root,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                timeout=timeout,
            )
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: the overlay could not be unmounted
            state_dir.rmdir()
