"""A writable overlayfs upper over a read-only lower directory (a mounted image).

The lower is never written: the container's writes land in ``upper/``; ``merged/`` is
the container's root filesystem. Mount and unmount are mount(2)/umount2(2) through
ctypes, so the option string reaches the kernel as written, without mount(8) parsing it
again. The kernel splits overlay options on ``,`` and lower layers on ``:``; paths holding
either (or ``\\``, the escape character) are refused rather than escaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from pathlib import Path
from types import TracebackType

from ketch.errors import StorageError, UnsupportedError

_MNT_DETACH = 2  # umount2(2) flag: lazy unmount, detach now, clean up when unused
_UNSAFE_IN_OPTIONS = (",", ":", "\\", "\n")
_libc = ctypes.CDLL(None, use_errno=True)


def _check_option_path(role: str, path: Path) -> None:
    """Refuse a path the kernel's overlay option parser would split or unescape."""
    found = [c for c in _UNSAFE_IN_OPTIONS if c in str(path)]
    if found:
        raise UnsupportedError(
            f"overlay {role} {str(path)!r}: expected a path without {' '.join(map(repr, found))} "
            "(overlayfs options split on them); use another directory"
        )


def _errno_text(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))} ({os.strerror(code)})"


def _mount_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    result = _libc.mount(b"overlay", os.fsencode(merged), b"overlay", 0, options.encode())
    if result != 0:
        code = ctypes.get_errno()
        hint = {
            errno.EPERM: "mounting needs root (CAP_SYS_ADMIN)",
            errno.ENODEV: "the kernel has no overlay filesystem (modprobe overlay)",
            errno.EINVAL: "the lower must support overlayfs (a FUSE lower must answer statfs); "
            "see dmesg",
        }.get(code, "see dmesg")
        raise StorageError(
            f"mounting overlay on {merged} over lower {lower}: expected success, found "
            f"{_errno_text(code)}; {hint}"
        )


def _unmount(merged: Path) -> None:
    """Unmount ``merged``; lazily when busy. Not mounted is not an error."""
    target = os.fsencode(merged)
    if _libc.umount2(target, 0) == 0:
        return
    code = ctypes.get_errno()
    if code == errno.EINVAL and not os.path.ismount(merged):
        return
    if code == errno.EBUSY and _libc.umount2(target, _MNT_DETACH) == 0:
        return
    code = ctypes.get_errno()
    raise StorageError(
        f"unmounting overlay {merged}: expected success, found {_errno_text(code)}; "
        "its state was left in place"
    )


class Overlay:
    """``with Overlay(lower, state_dir) as overlay:`` mounts ``state_dir/merged``.

    ``state_dir/upper`` takes the writes, ``state_dir/work`` is overlayfs's scratch space.
    On exit, also when the block raised, the overlay is unmounted (lazily if busy) and
    the three directories are removed; ``state_dir`` too if this overlay created it.
    """

    def __init__(self, lower: Path, state_dir: Path) -> None:
        self.lower = lower.resolve()
        self.state_dir = state_dir.absolute()
        self.upper = self.state_dir / "upper"
        self.work = self.state_dir / "work"
        self.merged = self.state_dir / "merged"
        self._created_state_dir = False
        self._mounted = False

    def __enter__(self) -> Overlay:
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def mount(self) -> None:
        if self._mounted:
            raise StorageError(f"overlay {self.merged}: expected unmounted, found mounted")
        if not self.lower.is_dir():
            raise StorageError(f"overlay lower {self.lower}: expected a directory, found none")
        for role, path in (("lower", self.lower), ("state dir", self.state_dir)):
            _check_option_path(role, path)
        stale = [p.name for p in (self.upper, self.work, self.merged) if os.path.lexists(p)]
        if stale:
            raise StorageError(
                f"overlay state dir {self.state_dir}: expected no {', '.join(stale)}, found "
                "them (left by an earlier run? remove them)"
            )
        if not self.state_dir.exists():
            self.state_dir.mkdir(parents=True, mode=0o700)
            self._created_state_dir = True
        try:
            lower_root = self.lower.stat()
            for path in (self.upper, self.work, self.merged):
                path.mkdir(mode=0o700)
            # The upper's root becomes the container's "/": give it the image root's
            # owner and mode, as the lower would have had.
            os.chown(self.upper, lower_root.st_uid, lower_root.st_gid)
            os.chmod(self.upper, lower_root.st_mode & 0o7777)
            _mount_overlay(self.lower, self.upper, self.work, self.merged)
            self._mounted = True
        except BaseException:
            self._remove_state()
            raise

    def close(self) -> None:
        """Unmount and remove the state. Safe to call twice."""
        if self._mounted:
            _unmount(self.merged)  # raises, leaving the state, if it stays mounted
            self._mounted = False
        self._remove_state()

    def _remove_state(self) -> None:
        if os.path.ismount(self.merged):
            raise StorageError(
                f"overlay {self.merged}: expected unmounted before removing its state, "
                "found still mounted"
            )
        for path in (self.upper, self.work, self.merged):
            # rmtree never follows symlinks; the work dir's inner "work" is mode 000,
            # which root may still remove.
            if os.path.lexists(path):
                shutil.rmtree(path)
        if self._created_state_dir:
            # Not empty if the caller put more into it (a bundle, say): theirs to remove.
            with contextlib.suppress(OSError):
                self.state_dir.rmdir()
            self._created_state_dir = False
