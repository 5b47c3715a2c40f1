"""A directory of temporaries that survives its writers being killed.

Each writing process keeps its temporaries in its own subdirectory, ``AREA/PID-START``
(``ketch.process_identity``: the pid and its start time, which a reused pid does not
share). A writer killed at any moment leaves only that subdirectory; the next writer
that opens the area removes every subdirectory whose process is gone, and an empty one
of its own at exit. Two areas are used: an OCI layout's ``.ketch-tmp`` (on the layout's
filesystem, so a rename publishes a blob) and ``$TMPDIR/ketch-tmp`` for stores that
spool locally before they upload (registry, S3), ``$TMPDIR/ketch-tmp-UID``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from ketch.errors import LocalFileError, local_file_error
from ketch.process_identity import pid_alive, this_process

_OWNER = re.compile(r"^([1-9][0-9]{0,9})-([0-9]{1,20})$")
_MADE: set[tuple[int, Path]] = set()  # the directories this process made


def _remove_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
        path.parent.rmdir()


class TempArea:
    """``root`` must be a real directory (a symlink there is refused: temporaries are never
    written, nor removed, outside it); with ``private``, one of this user's, mode 0700, as
    a shared directory such as /tmp requires."""

    def __init__(self, root: Path, *, private: bool = False) -> None:
        self.root = root
        self.private = private

    def _check_root(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.root.lstat()
        except OSError as exc:
            raise local_file_error(exc, self.root, "cannot make a temporary area") from None
        if not stat.S_ISDIR(info.st_mode):
            raise LocalFileError(f"{self.root}: temporary area: expected a directory")
        if self.private and (info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077):
            raise LocalFileError(
                f"{self.root}: temporary area: expected a directory of uid {os.geteuid()} "
                f"with mode 0700, found uid {info.st_uid} mode {stat.S_IMODE(info.st_mode):o}"
            )

    def own_dir(self) -> Path:
        """This process's directory (mode 0700), made on first use after the
        directories of processes that are gone are removed."""
        pid, started = this_process()
        path = self.root / f"{pid}-{started}"
        if (pid, path) in _MADE and path.is_dir():
            return path
        self._check_root()
        self.remove_stale()
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise local_file_error(exc, path, "cannot make a temporary directory") from None
        if (pid, path) not in _MADE:
            # Removed at exit if empty; a writer that fails or is killed leaves its files
            # for the next writer to remove.
            _MADE.add((pid, path))
            atexit.register(_remove_empty, path)
        return path

    def remove_stale(self) -> list[Path]:
        """Remove the directories of processes that are gone; what was removed. Entries
        not named PID-START are not ours and stay."""
        removed: list[Path] = []
        with contextlib.suppress(OSError):
            if not stat.S_ISDIR(self.root.lstat().st_mode):
                return removed  # not ours to walk
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(self.root):
                match = _OWNER.match(entry.name)
                if match is None or pid_alive(int(match.group(1)), int(match.group(2)) or None):
                    continue
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        return removed


def local_spool_area() -> TempArea:
    """Where stores without a local home (registry, S3) spool: ``$TMPDIR/ketch-tmp-UID``,
    this user's own (mode 0700)."""
    return TempArea(Path(tempfile.gettempdir()) / f"ketch-tmp-{os.geteuid()}", private=True)
