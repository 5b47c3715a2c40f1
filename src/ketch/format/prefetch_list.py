"""Prefetch lists: the files a workload reads, in first-access order, one path a line.

Read by ``ketch convert --prefetch-list`` (stored in the image's prefetch table) and by
a mount's ``--prefetch-file``; written by ``ketch ... --paths`` from a mount's access
trace. Lines end at ``\n``; each is stripped of ASCII whitespace (spaces, tabs, ``\r``);
blank lines and lines starting with ``#`` are skipped. A path is bytes, as in a
bootstrap: one that is not UTF-8 keeps its bytes (as ``surrogateescape`` characters).
"""

from __future__ import annotations

from pathlib import Path

from ketch.errors import UsageError

#: bytes of a list read at most: a list names files, not data
MAX_LIST_SIZE = 64 << 20
_BLANKS = b" \t\r\f\v"


def parse_prefetch_list(data: bytes) -> list[str]:
    """The paths of a prefetch list, in order."""
    paths = (line.strip(_BLANKS) for line in data.split(b"\n"))
    return [
        path.decode("utf-8", "surrogateescape")
        for path in paths
        if path and not path.startswith(b"#")
    ]


def read_prefetch_list(path: Path) -> list[str]:
    """The paths of the prefetch list file ``path``."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_LIST_SIZE + 1)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read prefetch list: {exc.strerror}") from None
    if len(data) > MAX_LIST_SIZE:
        raise UsageError(f"{path}: prefetch list: expected at most {MAX_LIST_SIZE} bytes")
    return parse_prefetch_list(data)
