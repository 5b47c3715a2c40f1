"""Compare two unpacked filesystem trees, attribute by attribute.

This is the yardstick for "the unpacked tree equals ``umoci unpack`` of the
source image".  Both trees are walked with :func:`os.scandir` on bytes paths
(non-UTF-8 names are kept exact), never following symlinks, and every path is
compared on:

- presence (the same set of paths on both sides), file type;
- permission bits incl. setuid/setgid/sticky (``S_IMODE``), uid, gid;
- regular files: size, contents (streamed SHA-256, bounded memory);
- ``st_mtime_ns`` of every non-directory (files, symlinks, fifos, devices), and
  of directories unless ``ignore_dir_mtime``;
- symlink targets (bytes), ``st_rdev`` of character and block devices;
- xattrs (not following symlinks; ``security.selinux`` ignored; a filesystem
  without xattr support counts as having none);
- hardlink groups: the partition of regular-file paths by ``(st_dev, st_ino)``.

The root directory itself is compared too (shown as ``/``).  Link counts,
atime/ctime, inode numbers and directory sizes are not compared.

Command line::

    python tests/treecmp.py A B [--ignore-dir-mtime] [--json]

exits 0 when the trees are equal, 1 when they differ, 2 on a usage error.
Only the standard library is used, so the script runs with any Python >= 3.11.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Difference", "compare_trees", "main"]

IGNORED_XATTRS = frozenset({b"security.selinux"})
MAX_PRINTED = 50
_CHUNK = 1 << 20
_VALUE_WIDTH = 80
_ABSENT = "<absent>"


@dataclass(frozen=True)
class Difference:
    """One attribute of one path that differs between the left and right tree."""

    path: str
    field: str
    left: str
    right: str

    def __str__(self) -> str:
        return f"{self.path}: {self.field}: {self.left} != {self.right}"


@dataclass(frozen=True, slots=True)
class _Entry:
    """What is compared of one path (contents excepted: hashed on demand)."""

    st: os.stat_result
    linkname: bytes | None
    xattrs: dict[bytes, bytes]


def _show_path(rel: bytes) -> str:
    return "/" + rel.decode("utf-8", "backslashreplace")


def _show_bytes(value: bytes) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."


def _file_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "char"
    if stat.S_ISBLK(mode):
        return "block"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"unknown({stat.S_IFMT(mode):o})"


def _read_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        key = os.fsencode(name)
        if key in IGNORED_XATTRS:
            continue
        try:
            out[key] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed between list and get
                continue
            raise
    return out


def _entry(path: bytes, st: os.stat_result) -> _Entry:
    linkname = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return _Entry(st=st, linkname=linkname, xattrs=_read_xattrs(path))


def _walk(root: bytes) -> dict[bytes, _Entry]:
    """Every path under ``root`` (relative, ``b""`` for the root) and its entry."""
    entries = {b"": _entry(root, os.lstat(root))}
    stack = [b""]
    while stack:
        rel = stack.pop()
        directory = os.path.join(root, rel) if rel else root
        with os.scandir(directory) as it:
            for item in it:
                child = os.path.join(rel, item.name) if rel else item.name
                st = item.stat(follow_symlinks=False)
                entries[child] = _entry(item.path, st)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(child)
    return entries


def _digest(path: bytes) -> str:
    try:
        with open(path, "rb", buffering=0) as f:
            return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        return f"<unreadable: {exc.strerror}>"


def _link_groups(entries: dict[bytes, _Entry]) -> dict[bytes, frozenset[bytes]]:
    """For each regular file linked more than once inside the tree: its whole group."""
    by_inode: dict[tuple[int, int], list[bytes]] = {}
    for rel, entry in entries.items():
        if stat.S_ISREG(entry.st.st_mode) and entry.st.st_nlink > 1:
            by_inode.setdefault((entry.st.st_dev, entry.st.st_ino), []).append(rel)
    groups: dict[bytes, frozenset[bytes]] = {}
    for members in by_inode.values():
        if len(members) > 1:
            group = frozenset(members)
            for rel in members:
                groups[rel] = group
    return groups


def _show_group(rel: bytes, group: frozenset[bytes]) -> str:
    others = sorted(group - {rel})
    return "[" + ", ".join(_show_path(o) for o in others) + "]" if others else "[]"


def _compare_entry(
    rel: bytes,
    left: _Entry,
    right: _Entry,
    a_root: bytes,
    b_root: bytes,
    ignore_dir_mtime: bool,
) -> list[Difference]:
    path = _show_path(rel)
    out: list[Difference] = []

    def differ(field: str, lval: str, rval: str) -> None:
        out.append(Difference(path, field, lval, rval))

    ls, rs = left.st, right.st
    ltype, rtype = _file_type(ls.st_mode), _file_type(rs.st_mode)
    if ltype != rtype:
        differ("type", ltype, rtype)
    if stat.S_IMODE(ls.st_mode) != stat.S_IMODE(rs.st_mode):
        differ("mode", f"{stat.S_IMODE(ls.st_mode):04o}", f"{stat.S_IMODE(rs.st_mode):04o}")
    if ls.st_uid != rs.st_uid:
        differ("uid", str(ls.st_uid), str(rs.st_uid))
    if ls.st_gid != rs.st_gid:
        differ("gid", str(ls.st_gid), str(rs.st_gid))
    if ltype != rtype:
        return out + _compare_xattrs(path, left, right)

    if (ltype != "dir" or not ignore_dir_mtime) and ls.st_mtime_ns != rs.st_mtime_ns:
        differ("mtime_ns", str(ls.st_mtime_ns), str(rs.st_mtime_ns))
    if ltype == "file":
        if ls.st_size != rs.st_size:
            differ("size", str(ls.st_size), str(rs.st_size))
        else:
            ldig = _digest(os.path.join(a_root, rel))
            rdig = _digest(os.path.join(b_root, rel))
            if ldig != rdig:
                differ("content", ldig, rdig)
    elif ltype == "symlink" and left.linkname != right.linkname:
        differ("linkname", _show_bytes(left.linkname or b""), _show_bytes(right.linkname or b""))
    elif ltype in ("char", "block") and ls.st_rdev != rs.st_rdev:
        differ(
            "rdev",
            f"{os.major(ls.st_rdev)},{os.minor(ls.st_rdev)}",
            f"{os.major(rs.st_rdev)},{os.minor(rs.st_rdev)}",
        )
    return out + _compare_xattrs(path, left, right)


def _compare_xattrs(path: str, left: _Entry, right: _Entry) -> list[Difference]:
    if left.xattrs == right.xattrs:
        return []
    out = []
    for name in sorted(left.xattrs.keys() | right.xattrs.keys()):
        lval, rval = left.xattrs.get(name), right.xattrs.get(name)
        if lval != rval:
            out.append(
                Difference(
                    path,
                    "xattr:" + name.decode("utf-8", "backslashreplace"),
                    _ABSENT if lval is None else _show_bytes(lval),
                    _ABSENT if rval is None else _show_bytes(rval),
                )
            )
    return out


def _compare(a: Path, b: Path, ignore_dir_mtime: bool) -> tuple[list[Difference], int]:
    a_root, b_root = os.fsencode(a), os.fsencode(b)
    left, right = _walk(a_root), _walk(b_root)
    differences: list[Difference] = []
    for rel in sorted(left.keys() | right.keys()):
        lentry, rentry = left.get(rel), right.get(rel)
        if lentry is not None and rentry is not None:
            differences += _compare_entry(rel, lentry, rentry, a_root, b_root, ignore_dir_mtime)
            continue
        differences.append(
            Difference(
                _show_path(rel),
                "exists",
                _ABSENT if lentry is None else _file_type(lentry.st.st_mode),
                _ABSENT if rentry is None else _file_type(rentry.st.st_mode),
            )
        )

    lgroups, rgroups = _link_groups(left), _link_groups(right)
    for rel in sorted(lgroups.keys() | rgroups.keys()):
        if rel not in left or rel not in right:
            continue  # already reported as missing
        if not (stat.S_ISREG(left[rel].st.st_mode) and stat.S_ISREG(right[rel].st.st_mode)):
            continue  # already reported as a type difference
        lgroup = lgroups.get(rel, frozenset({rel}))
        rgroup = rgroups.get(rel, frozenset({rel}))
        if lgroup != rgroup:
            differences.append(
                Difference(
                    _show_path(rel),
                    "hardlinks",
                    _show_group(rel, lgroup),
                    _show_group(rel, rgroup),
                )
            )
    return differences, len(left)


def compare_trees(a: Path, b: Path, *, ignore_dir_mtime: bool = False) -> list[Difference]:
    """Every difference between the trees rooted at ``a`` and ``b`` (empty: equal).

    Differences are sorted by path (byte order), hardlink-group differences last.
    """
    return _compare(a, b, ignore_dir_mtime)[0]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="treecmp",
        description="Compare two unpacked filesystem trees (exit 0: equal, 1: different).",
    )
    parser.add_argument("a", type=Path, help="left tree")
    parser.add_argument("b", type=Path, help="right tree")
    parser.add_argument(
        "--ignore-dir-mtime", action="store_true", help="do not compare directory mtimes"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse(argv)
    for tree in (args.a, args.b):
        if not tree.is_dir():
            print(f"treecmp: not a directory: {tree}", file=sys.stderr)
            return 2
    differences, count = _compare(args.a, args.b, args.ignore_dir_mtime)
    if args.json:
        report = {
            "equal": not differences,
            "entries": count,
            "differences": [asdict(d) for d in differences],
        }
        print(json.dumps(report, indent=2))
    elif not differences:
        print(f"trees equal: {count} entries")
    else:
        for difference in differences[:MAX_PRINTED]:
            print(difference)
        if len(differences) > MAX_PRINTED:
            print(f"... and {len(differences) - MAX_PRINTED} more")
        print(f"trees differ: {len(differences)} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
