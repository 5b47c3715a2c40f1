"""Paths of many inodes at once, in one pass over the directories that name them.

A bootstrap inode knows its parent but not its own name: the name is a dirent of the
parent, whose entries are sorted by name, not by inode. Finding one inode's name is a
scan of its parent directory, so naming each file of a 100,000-entry directory alone
would cost 100,000 scans of it. ``paths_of`` takes every inode it must name at once,
groups them by parent, and scans each directory involved once (stopping as soon as the
names it needs are found): its cost is the size of those directories, whatever the
number of inodes asked for.

A hardlinked inode is named by its first name (smallest name bytes) in the directory its
``parent`` field names. An inode the parent links cannot name (a bootstrap whose parent
fields disagree with its dirents, or loop) is looked for by one breadth-first walk of
the whole tree from the root; one no directory names at all is left out of the result.
"""

from __future__ import annotations

import stat
from collections import deque
from collections.abc import Iterable

from ketch.errors import KetchError
from ketch.format.bootstrap import ROOT_INODE, Bootstrap


def paths_of(bootstrap: Bootstrap, indexes: Iterable[int]) -> dict[int, bytes]:
    """Absolute paths (``b"/a/b"``; the root is ``b"/"``) of inode indexes, by index."""
    wanted = set(indexes)
    paths = _by_parents(bootstrap, wanted)
    missing = wanted - paths.keys()
    if missing:
        paths.update(_by_walk(bootstrap, missing))
    return paths


def _by_parents(bootstrap: Bootstrap, wanted: set[int]) -> dict[int, bytes]:
    # Every inode on the way up from a wanted one, with its parent; each index is added
    # at most once, so a loop of parent links ends the walk up.
    parent_of: dict[int, int] = {}
    needed: dict[int, set[int]] = {}  # directory -> children whose names are needed
    for index in wanted:
        node = index
        while node != ROOT_INODE and node not in parent_of:
            try:
                parent = bootstrap.inode(node).parent
            except KetchError:
                break
            parent_of[node] = parent
            needed.setdefault(parent, set()).add(node)
            node = parent
    names: dict[int, bytes] = {}
    for directory, children in needed.items():
        names.update(_names_in(bootstrap, directory, children))
    paths: dict[int, bytes] = {ROOT_INODE: b""}
    out: dict[int, bytes] = {}
    for index in wanted:
        path = _assemble(index, parent_of, names, paths)
        if path is not None:
            out[index] = path or b"/"
    return out


def _names_in(bootstrap: Bootstrap, directory: int, children: set[int]) -> dict[int, bytes]:
    """The first name of each of ``children`` in ``directory``: one scan, cut short."""
    found: dict[int, bytes] = {}
    try:
        for name, child in bootstrap.children(directory):
            if child in children and child not in found:
                found[child] = name
                if len(found) == len(children):
                    break
    except KetchError:
        pass  # not a directory, or damaged: what it does not name is found by the walk
    return found


def _assemble(
    index: int, parent_of: dict[int, int], names: dict[int, bytes], paths: dict[int, bytes]
) -> bytes | None:
    """``index``'s path from the names found (memoised in ``paths``: ancestors shared by
    many inodes are joined once); None if a name is missing or the parents loop."""
    chain: list[int] = []
    node = index
    on_chain: set[int] = set()
    while node not in paths:
        if node not in names or node in on_chain:
            return None
        on_chain.add(node)
        chain.append(node)
        node = parent_of[node]
    path = paths[node]
    for node in reversed(chain):
        path = path + b"/" + names[node]
        paths[node] = path
    return path


def _by_walk(bootstrap: Bootstrap, missing: set[int]) -> dict[int, bytes]:
    """Paths of ``missing`` found by walking the tree breadth first from the root (each
    directory entered once, so dirent loops end); stops when all are found."""
    out: dict[int, bytes] = {}
    if ROOT_INODE in missing:
        out[ROOT_INODE] = b"/"
    queue: deque[tuple[int, bytes]] = deque([(ROOT_INODE, b"")])
    entered = {ROOT_INODE}
    while queue and len(out) < len(missing):
        directory, prefix = queue.popleft()
        try:
            entries = list(bootstrap.children(directory))
        except KetchError:
            continue
        for name, child in entries:
            path = prefix + b"/" + name
            if child in missing and child not in out:
                out[child] = path
            if child not in entered:
                entered.add(child)
                try:
                    is_dir = stat.S_ISDIR(bootstrap.inode(child).mode)
                except KetchError:
                    continue
                if is_dir:
                    queue.append((child, path))
    return out
