"""The merged filesystem tree the builder assembles, and OCI layer overlay on it.

Layers are applied bottom-up with the image-spec's rules: an opaque marker hides the
lower contents of its directory, a whiteout deletes one lower entry, an entry replaces
what was there (a directory over a directory merges). Within a layer, changes are
applied in path order, never tar order, so the result does not depend on tar order.
Parent paths are resolved inside the root, following symlinks as umoci's securejoin
does, so no entry can land outside the tree.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from ketch.errors import BadLayerError
from ketch.oci.tar_layer import EntryKind, LayerEntry

_MAX_SYMLINK_HOPS = 40
_SYMLINK_MODE = stat.S_IFLNK | 0o777
ChunkList = list[tuple[bytes, int]]  # (digest, uncompressed size) in file order
TreePath = tuple[bytes, ...]  # a path below the root, one name per part


@dataclass(slots=True, eq=False)
class Node:
    mode: int
    uid: int = 0
    gid: int = 0
    mtime_sec: int = 0
    mtime_nsec: int = 0
    size: int = 0
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    link_target: bytes = b""
    chunks: ChunkList = field(default_factory=list)
    children: dict[bytes, Node] | None = None

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    @classmethod
    def directory(cls, mode: int = 0o755) -> Node:
        return cls(mode=stat.S_IFDIR | mode, children={})

    @classmethod
    def from_entry(cls, entry: LayerEntry, chunks: ChunkList | None = None) -> Node:
        node = cls(
            # A symlink's permission bits mean nothing on Linux and read 0777 whatever a
            # tar header says (as after umoci's unpack): stored so, its digest follows.
            mode=_SYMLINK_MODE if entry.kind is EntryKind.SYMLINK else entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            mtime_sec=entry.mtime_sec,
            mtime_nsec=entry.mtime_nsec,
            size=entry.size,
            rdev=entry.rdev,
            xattrs=dict(entry.xattrs),
            link_target=entry.link_target,
            chunks=chunks or [],
        )
        if entry.kind is EntryKind.DIR:
            node.children = {}
            node.size = 0
        return node

    def take_attributes(self, entry: LayerEntry) -> None:
        """A directory entry over an existing directory: new attributes, same children."""
        self.mode = entry.mode
        self.uid, self.gid = entry.uid, entry.gid
        self.mtime_sec, self.mtime_nsec = entry.mtime_sec, entry.mtime_nsec
        self.xattrs = dict(entry.xattrs)


@dataclass(slots=True)
class LayerChanges:
    """What one layer does, collected while its tar streams by."""

    name: str
    opaque: set[tuple[bytes, ...]] = field(default_factory=set)
    whiteouts: set[tuple[bytes, ...]] = field(default_factory=set)
    nodes: dict[tuple[bytes, ...], tuple[LayerEntry, Node]] = field(default_factory=dict)
    hardlinks: dict[tuple[bytes, ...], LayerEntry] = field(default_factory=dict)

    def add(self, entry: LayerEntry, node: Node | None = None) -> None:
        # Whiteouts and opaque markers hide lower layers only: an entry of this layer at
        # the same path stays, whatever the tar order (image-spec layer.md, "Whiteouts").
        if entry.kind is EntryKind.OPAQUE:
            self.opaque.add(entry.path)
            return
        if entry.kind is EntryKind.WHITEOUT:
            self.whiteouts.add(entry.path)
            return
        # Otherwise the last entry for a path wins, as when extracting the tar in order.
        self.nodes.pop(entry.path, None)
        self.hardlinks.pop(entry.path, None)
        if entry.kind is EntryKind.HARDLINK:
            self.hardlinks[entry.path] = entry
        elif node is not None:
            self.nodes[entry.path] = (entry, node)

    def link_source(self, path: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """What the hardlink at ``path`` names, through links to links of this layer
        (a tar may link to an earlier link; the layer is applied in path order, where
        that earlier link may come later). A cycle names what the lower layers hold."""
        seen = {path}
        source = self.hardlinks[path].link_path
        while source in self.hardlinks:
            if source in seen:
                return self.hardlinks[path].link_path
            seen.add(source)
            source = self.hardlinks[source].link_path
        return source


class Tree:
    def __init__(self, root_mode: int = 0o755) -> None:
        self.root = Node.directory(root_mode)

    def nodes(self) -> Iterator[Node]:
        """Every node once (a hardlinked inode is yielded once per name)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(node.children.values())

    # -- resolution inside the root ----------------------------------------------------

    def _walk(
        self,
        path: tuple[bytes, ...],
        layer: str,
        *,
        create: bool,
        entry: tuple[bytes, ...] | None = None,
    ) -> Node | None:
        """The directory ``path`` names, following symlinks confined to the root.

        ``entry`` is the layer entry being placed, named in errors (default ``path``).
        """
        node = self.root
        stack: list[Node] = []
        trail: list[bytes] = []  # the path of ``node`` below the root, symlinks resolved
        pending = list(reversed(path))  # names still to resolve, the next one last
        hops = 0
        while pending:
            name = pending.pop()
            if name == b"..":
                node = stack.pop() if stack else self.root
                del trail[-1:]
                continue
            children = _children_of(node, layer, path)
            child = children.get(name)
            if child is None:
                if not create:
                    return None
                child = Node.directory()
                children[name] = child
            if stat.S_ISLNK(child.mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    raise BadLayerError(
                        f"layer {layer}: too many symlinks resolving {_show(entry or path)}"
                    )
                target = child.link_target
                parts = [p for p in target.split(b"/") if p not in (b"", b".")]
                if target.startswith(b"/"):
                    node, stack, trail = self.root, [], []
                pending.extend(reversed(parts))
                continue
            if not child.is_dir:
                if create:
                    raise BadLayerError(
                        f"layer {layer}: {_show(entry or path)}: expected a directory at "
                        f"{_show((*trail, name))}, found a {_kind(child.mode)}"
                    )
                return None
            stack.append(node)
            node = child
            trail.append(name)
        return node

    def lookup(self, path: tuple[bytes, ...]) -> Node | None:
        """The node at ``path`` without following a final symlink; None if absent."""
        if not path:
            return self.root
        parent = self._walk(path[:-1], "", create=False)
        if parent is None or parent.children is None:
            return None
        return parent.children.get(path[-1])

    def _parent_children(
        self, path: TreePath, layer: str, resolved: dict[TreePath, Node]
    ) -> dict[bytes, Node]:
        """The children of ``path``'s parent, creating missing directories on the way.

        ``resolved``: directories already resolved while applying this layer, by path.
        The layer's entries come in path order, so a parent is mostly the entry just
        placed, and a deep tree is not walked from the root once per entry.
        """
        parent = resolved.get(path[:-1])
        if parent is None:
            parent = self._walk(path[:-1], layer, create=True, entry=path)
            if parent is None:
                raise BadLayerError(f"layer {layer}: no parent directory for {_show(path)}")
            resolved[path[:-1]] = parent
        return _children_of(parent, layer, path)

    def _place(
        self,
        siblings: dict[bytes, Node],
        path: TreePath,
        node: Node,
        resolved: dict[TreePath, Node],
    ) -> None:
        """``node`` at ``path``, replacing what was there."""
        existing = siblings.get(path[-1])
        if existing is not None and (existing.is_dir or stat.S_ISLNK(existing.mode)):
            # A path resolved before may have gone through what is replaced.
            resolved.clear()
        siblings[path[-1]] = node
        if node.is_dir:
            resolved[path] = node

    # -- applying a layer -------------------------------------------------------------

    def apply(self, changes: LayerChanges) -> dict[tuple[bytes, ...], Node]:
        """Apply one layer; the node each of its hardlinks names, by the link's path."""
        layer = changes.name
        links: dict[tuple[bytes, ...], Node] = {}
        for path in sorted(changes.opaque):
            directory = self._walk(path, layer, create=False) if path else self.root
            if directory is not None and directory.children is not None:
                directory.children.clear()
        for path in sorted(changes.whiteouts):
            parent = self._walk(path[:-1], layer, create=False)
            if parent is not None and parent.children is not None:
                parent.children.pop(path[-1], None)
        resolved: dict[TreePath, Node] = {}
        for path in sorted(changes.nodes):
            entry, node = changes.nodes[path]
            if not path:
                self.root.take_attributes(entry)
                continue
            siblings = self._parent_children(path, layer, resolved)
            existing = siblings.get(path[-1])
            if node.is_dir and existing is not None and existing.is_dir:
                existing.take_attributes(entry)
                resolved[path] = existing
            else:
                self._place(siblings, path, node, resolved)
        for path in sorted(changes.hardlinks):
            source = changes.link_source(path)
            target = self.lookup(source)
            if target is None:
                raise BadLayerError(
                    f"layer {layer}: hardlink {_show(path)} -> {_show(source)}: target not found"
                )
            if target.is_dir:
                raise BadLayerError(f"layer {layer}: hardlink {_show(path)} points at a directory")
            if not path:
                raise BadLayerError(f"layer {layer}: hardlink replaces the root")
            self._place(self._parent_children(path, layer, resolved), path, target, resolved)
            links[path] = target
        return links


def _children_of(node: Node, layer: str, path: tuple[bytes, ...]) -> dict[bytes, Node]:
    if node.children is None:
        raise BadLayerError(f"layer {layer}: {_show(path)} passes through a non-directory")
    return node.children


def _kind(mode: int) -> str:
    """What a non-directory is, for messages."""
    kinds = {
        stat.S_IFREG: "regular file",
        stat.S_IFLNK: "symlink",
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "fifo",
        stat.S_IFSOCK: "socket",
    }
    return kinds.get(stat.S_IFMT(mode), f"file of mode {mode:#o}")


def _show(path: tuple[bytes, ...]) -> str:
    return repr("/" + b"/".join(path).decode(errors="replace"))
