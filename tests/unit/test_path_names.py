"""Paths of inodes from a bootstrap: many at once, hardlinks by their first name, deep
trees, and bootstraps whose parent fields lie (hostile input: a path or none, never a
hang or an exception)."""

from __future__ import annotations

import dataclasses

from ketch.format.bootstrap import Bootstrap
from ketch.format.records import InodeRecord
from ketch.fs.path_names import paths_of
from tests.fixtures.bootstrap_tree import bootstrap_of, deep, directory, empty_file


def _with_parent(bootstrap: Bootstrap, index: int, parent: int) -> Bootstrap:
    """A copy of ``bootstrap`` whose inode ``index`` names ``parent`` as its parent."""
    data = bytearray(bytes(bootstrap.raw))
    offset = bootstrap.superblock.inode_offset + index * InodeRecord.size_of
    record = dataclasses.replace(InodeRecord.unpack(bytes(data), offset), parent=parent)
    data[offset : offset + InodeRecord.size_of] = record.pack()
    return Bootstrap(bytes(data))


def test_every_inode_of_a_tree_by_its_path() -> None:
    linked = empty_file()
    root = directory(
        [
            (b"etc", directory([(b"passwd", empty_file()), (b"z-link", linked)])),
            (
                b"usr",
                directory([(b"bin", directory([(b"a-link", linked), (b"sh", empty_file())]))]),
            ),
        ]
    )
    bootstrap = bootstrap_of(root)
    everything = range(bootstrap.inode_count)
    paths = paths_of(bootstrap, everything)
    # The hardlink is named in the directory its parent field names (the first met,
    # breadth first): etc/, though usr/bin/a-link sorts first.
    assert sorted(paths.values()) == [
        b"/",
        b"/etc",
        b"/etc/passwd",
        b"/etc/z-link",
        b"/usr",
        b"/usr/bin",
        b"/usr/bin/sh",
    ]
    for index, path in paths.items():
        assert bootstrap.resolve(path) == index


def test_a_file_1500_directories_deep() -> None:
    bootstrap = bootstrap_of(deep(1500))
    leaf = bootstrap.inode_count - 1
    assert paths_of(bootstrap, [leaf]) == {leaf: b"/d" * 1500 + b"/leaf"}


def test_a_lying_parent_field_is_found_by_a_walk_of_the_tree() -> None:
    bootstrap = bootstrap_of(
        directory([(b"a", directory([(b"f", empty_file())])), (b"b", directory())])
    )
    f = bootstrap.resolve("a/f")
    assert paths_of(_with_parent(bootstrap, f, bootstrap.resolve("b")), [f]) == {f: b"/a/f"}
    # A loop of parents (a names b, b names a) ends too.
    a, b = bootstrap.resolve("a"), bootstrap.resolve("b")
    looped = _with_parent(_with_parent(bootstrap, a, b), b, a)
    assert paths_of(looped, [f, a, b]) == {f: b"/a/f", a: b"/a", b: b"/b"}
    # A parent index past the table, and an inode index past it, are no path.
    assert paths_of(_with_parent(bootstrap, f, 10**6), [f, 10**6]) == {f: b"/a/f"}
