"""Tests of the tree comparator used to judge unpacked trees against umoci."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.treecmp import Difference, compare_trees, main

TREECMP = Path(__file__).resolve().parents[1] / "treecmp.py"
T0 = 1_600_000_000_123_456_789
is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root (chown, mknod)")


def make_tree(root: Path) -> None:
    """A small tree with one of everything; the same bytes and times on every call."""
    root.mkdir()
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "file").write_bytes(b"hello\n")
    (root / "dir" / "data").write_bytes(bytes(range(256)) * 5000)  # 1.2 MiB: several chunks
    (root / "dir" / "sub" / "empty").write_bytes(b"")
    (root / "exec").write_bytes(b"#!/bin/sh\n")
    (root / "exec").chmod(0o4755)
    (root / "sticky").mkdir()
    (root / "sticky").chmod(0o1777)
    os.symlink("file", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.mkfifo(root / "fifo")
    os.link(root / "file", root / "file.hard")
    (root / "attrs").write_bytes(b"x")
    os.setxattr(root / "attrs", "user.one", b"1")
    os.setxattr(root / "attrs", "user.bin", b"\x00\xff")
    with open(os.fsencode(root) + b"/bad\xffname", "wb") as f:
        f.write(b"not utf-8 name")
    if is_root:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(root / "dir" / "sub", 1000, 1001)
    set_times(root)


def set_times(root: Path) -> None:
    """Give every path a distinct, fixed mtime (bottom-up so dirs keep theirs)."""
    paths = sorted(
        (os.fsencode(p) for p in [root, *root.rglob("*")]), key=lambda p: (-p.count(b"/"), p)
    )
    for i, path in enumerate(paths):
        ns = T0 + i * 1_000_000_007
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    make_tree(b)
    return a, b


def fields(differences: list[Difference]) -> set[tuple[str, str]]:
    return {(d.path, d.field) for d in differences}


def test_equal_trees(trees: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = trees
    assert compare_trees(a, b) == []
    assert main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    count = len(list(a.rglob("*"))) + 1
    assert out == f"trees equal: {count} entries\n"


def test_tree_equals_itself(trees: tuple[Path, Path]) -> None:
    assert compare_trees(trees[0], trees[0]) == []


def test_content_same_size(trees: tuple[Path, Path]) -> None:
    a, b = trees
    data = bytearray((b / "dir" / "data").read_bytes())
    data[-1] ^= 1  # last byte of the last chunk
    st = os.stat(b / "dir" / "data")
    (b / "dir" / "data").write_bytes(bytes(data))
    os.utime(b / "dir" / "data", ns=(st.st_atime_ns, st.st_mtime_ns))
    diffs = compare_trees(a, b)
    assert fields(diffs) == {("/dir/data", "content")}
    assert diffs[0].left.startswith("sha256:")
    assert diffs[0].right.startswith("sha256:")


def test_size(trees: tuple[Path, Path]) -> None:
    a, b = trees
    st = os.stat(b / "file")
    (b / "file").write_bytes(b"hello world\n")
    os.utime(b / "file", ns=(st.st_atime_ns, st.st_mtime_ns))
    # file.hard is the same inode, so it changes too
    assert fields(compare_trees(a, b)) == {("/file", "size"), ("/file.hard", "size")}


def test_mode(trees: tuple[Path, Path]) -> None:
    a, b = trees
    (b / "exec").chmod(0o755)  # setuid lost
    (b / "sticky").chmod(0o777)  # sticky lost
    diffs = compare_trees(a, b)
    assert fields(diffs) == {("/exec", "mode"), ("/sticky", "mode")}
    exec_diff = next(d for d in diffs if d.path == "/exec")
    assert (exec_diff.left, exec_diff.right) == ("4755", "0755")


@needs_root
def test_owner(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.chown(b / "dir" / "sub", 1000, 1002)
    os.chown(b / "link", 5, 0, follow_symlinks=False)
    assert fields(compare_trees(a, b)) == {("/dir/sub", "gid"), ("/link", "uid")}


def test_mtime_ns(trees: tuple[Path, Path]) -> None:
    a, b = trees
    st = os.lstat(b / "file")
    os.utime(b / "file", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    st = os.lstat(b / "link")
    os.utime(b / "link", ns=(st.st_atime_ns, st.st_mtime_ns - 1), follow_symlinks=False)
    diffs = compare_trees(a, b)
    assert fields(diffs) == {
        ("/file", "mtime_ns"),
        ("/file.hard", "mtime_ns"),
        ("/link", "mtime_ns"),
    }
    file_diff = next(d for d in diffs if d.path == "/file")
    assert int(file_diff.right) - int(file_diff.left) == 1


def test_dir_mtime_and_ignore_flag(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.utime(b / "dir", ns=(T0, T0 + 5))
    os.utime(b, ns=(T0, T0 + 5))
    assert fields(compare_trees(a, b)) == {("/dir", "mtime_ns"), ("/", "mtime_ns")}
    assert compare_trees(a, b, ignore_dir_mtime=True) == []
    assert main([str(a), str(b), "--ignore-dir-mtime"]) == 0


def test_symlink_target(trees: tuple[Path, Path]) -> None:
    a, b = trees
    st = os.lstat(b / "link")
    (b / "link").unlink()
    os.symlink("file.hard", b / "link")
    os.utime(b / "link", ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    os.utime(b, ns=(T0, os.lstat(a).st_mtime_ns))
    diffs = compare_trees(a, b)
    assert fields(diffs) == {("/link", "linkname")}
    assert (diffs[0].left, diffs[0].right) == ("b'file'", "b'file.hard'")


def test_symlink_not_followed(tmp_path: Path) -> None:
    # a symlink to a directory is a symlink, not a directory to walk
    for side, target in (("a", "/etc"), ("b", "/etc")):
        (tmp_path / side).mkdir()
        os.symlink(target, tmp_path / side / "etc")
        os.utime(tmp_path / side / "etc", ns=(T0, T0), follow_symlinks=False)
        os.utime(tmp_path / side, ns=(T0, T0))
    assert compare_trees(tmp_path / "a", tmp_path / "b") == []


def test_xattrs(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.setxattr(b / "attrs", "user.one", b"2")
    os.removexattr(b / "attrs", "user.bin")
    os.setxattr(b / "dir", "user.new", b"n")
    diffs = compare_trees(a, b)
    assert fields(diffs) == {
        ("/attrs", "xattr:user.one"),
        ("/attrs", "xattr:user.bin"),
        ("/dir", "xattr:user.new"),
    }
    new = next(d for d in diffs if d.path == "/dir")
    assert (new.left, new.right) == ("<absent>", "b'n'")


def test_hardlink_grouping(trees: tuple[Path, Path]) -> None:
    a, b = trees
    # replace the hard link by an identical, separate file: every attribute matches
    st = os.lstat(b / "file.hard")
    (b / "file.hard").unlink()
    (b / "file.hard").write_bytes(b"hello\n")
    os.utime(b / "file.hard", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(b, ns=(T0, os.lstat(a).st_mtime_ns))
    diffs = compare_trees(a, b)
    assert fields(diffs) == {("/file", "hardlinks"), ("/file.hard", "hardlinks")}
    first = next(d for d in diffs if d.path == "/file")
    assert (first.left, first.right) == ("[/file.hard]", "[]")


def test_hardlink_regrouped(tmp_path: Path) -> None:
    # same contents everywhere, {x, y} + {z} on the left, {x} + {y, z} on the right
    for side, pairs in (("a", ("x", "y")), ("b", ("y", "z"))):
        root = tmp_path / side
        root.mkdir()
        for name in "xyz":
            if name != pairs[1]:
                (root / name).write_bytes(b"same")
        os.link(root / pairs[0], root / pairs[1])
        set_times(root)
        for name in "xyz":
            os.utime(root / name, ns=(T0, T0))
    assert fields(compare_trees(tmp_path / "a", tmp_path / "b")) == {
        ("/x", "hardlinks"),
        ("/y", "hardlinks"),
        ("/z", "hardlinks"),
    }


def test_links_outside_tree_do_not_matter(trees: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = trees
    os.link(b / "exec", tmp_path / "outside")  # nlink 2, but alone inside the tree
    assert compare_trees(a, b) == []


def test_missing_path(trees: tuple[Path, Path]) -> None:
    a, b = trees
    shutil.rmtree(b / "dir" / "sub")
    os.utime(b / "dir", ns=(T0, os.lstat(a / "dir").st_mtime_ns))
    diffs = compare_trees(a, b)
    assert fields(diffs) == {("/dir/sub", "exists"), ("/dir/sub/empty", "exists")}
    assert (diffs[0].left, diffs[0].right) == ("dir", "<absent>")
    extra = compare_trees(b, a)
    assert (extra[0].left, extra[0].right) == ("<absent>", "dir")


def test_fifo_vs_file(trees: tuple[Path, Path]) -> None:
    a, b = trees
    st = os.lstat(b / "fifo")
    (b / "fifo").unlink()
    (b / "fifo").write_bytes(b"")
    (b / "fifo").chmod(stat.S_IMODE(st.st_mode))
    os.utime(b / "fifo", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(b, ns=(T0, os.lstat(a).st_mtime_ns))
    diffs = compare_trees(a, b)
    assert fields(diffs) == {("/fifo", "type")}
    assert (diffs[0].left, diffs[0].right) == ("fifo", "file")


@needs_root
def test_device_numbers(trees: tuple[Path, Path]) -> None:
    a, b = trees
    st = os.lstat(b / "null")
    (b / "null").unlink()
    os.mknod(b / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    os.utime(b / "null", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.utime(b, ns=(T0, os.lstat(a).st_mtime_ns))
    diffs = compare_trees(a, b)
    assert fields(diffs) == {("/null", "rdev")}
    assert (diffs[0].left, diffs[0].right) == ("1,3", "1,5")


def test_non_utf8_name(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.unlink(os.fsencode(b) + b"/bad\xffname")
    os.utime(b, ns=(T0, os.lstat(a).st_mtime_ns))
    diffs = compare_trees(a, b)
    assert [str(d) for d in diffs] == ["/bad\\xffname: exists: file != <absent>"]


def test_difference_str_is_one_line() -> None:
    d = Difference("/a b", "mode", "0644", "0755")
    assert str(d) == "/a b: mode: 0644 != 0755"
    assert "\n" not in str(d)


def test_main_lists_at_most_50(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i in range(60):
        (tmp_path / "a" / f"f{i:02d}").write_bytes(b"")
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--ignore-dir-mtime"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 52
    assert lines[0] == "/f00: exists: file != <absent>"
    assert lines[50] == "... and 10 more"
    assert lines[51] == "trees differ: 60 differences"


def test_main_json(trees: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = trees
    (b / "exec").chmod(0o755)
    assert main([str(a), str(b), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["equal"] is False
    assert report["entries"] == len(list(a.rglob("*"))) + 1
    assert report["differences"] == [
        {"path": "/exec", "field": "mode", "left": "4755", "right": "0755"}
    ]


def test_main_not_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_script(trees: tuple[Path, Path]) -> None:
    a, b = trees
    equal = subprocess.run(
        [sys.executable, str(TREECMP), str(a), str(b)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert (equal.returncode, equal.stdout.startswith("trees equal: ")) == (0, True)
    (b / "file").chmod(0o600)
    differ = subprocess.run(
        [sys.executable, str(TREECMP), str(a), str(b)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert differ.returncode == 1
    assert "/file: mode: 0644 != 0600" in differ.stdout
