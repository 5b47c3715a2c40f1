"""Unix socket paths of any length: an address holds at most 108 bytes, and state and
test directories can be deeper than that."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_MAX_ADDRESS = 100  # bytes: under sun_path's 108, with room for the terminating NUL


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for ``path`` to bind or connect to: the path itself when it fits, else
    the same name through an open descriptor of its directory (``/proc/self/fd/N/NAME``),
    valid for the ``with`` block."""
    if len(os.fsencode(path)) < _MAX_ADDRESS:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
