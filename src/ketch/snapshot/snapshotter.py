"""The snapshotter: containerd's snapshot operations on dirs under a root, as its overlayfs one.

    ROOT/metadata.db            snapshots (ketch.snapshot.metadata)
    ROOT/snapshots/ID/fs        the snapshot's tree (the overlay upper dir while active)
    ROOT/snapshots/ID/work      overlayfs work dir

Mounts are containerd's overlayfs snapshotter's: a snapshot with no parent is a bind mount
of its ``fs``; an active snapshot over parents is an overlay (``upperdir``, ``workdir``,
``lowerdir=nearest:...:bottom``); a view over one parent binds that parent read-only. The
dirs of a new snapshot exist before its row is committed, and a removed snapshot's dirs go
after its row: a crash between leaves only dirs no row names, which ``cleanup`` removes.

Ketch layers are remote snapshots (``ketch.snapshot.remote``): made committed under the
Prepare key, the bootstrap one with its ``fs`` dir a lazy FUSE mount of the image, and
answered ALREADY_EXISTS, as containerd's remote snapshotters do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ketch.daemon.state import DEFAULT_CACHE_DIR, is_mounted, read_record
from ketch.errors import KetchError
from ketch.snapshot import remote
from ketch.snapshot.metadata import (
    AlreadyExistsError,
    FailedPreconditionError,
    Kind,
    MetadataStore,
    Snapshot,
    SnapshotError,
)

log = logging.getLogger("ketch.snapshot")


@dataclass(frozen=True, slots=True)
class Mount:
    """As containerd.types.Mount."""

    type: str
    source: str
    options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Usage:
    size: int  # bytes
    inodes: int


class Snapshotter:
    def __init__(self, root: Path, cache_dir: Path = DEFAULT_CACHE_DIR) -> None:
        self.root = root
        self.cache_dir = cache_dir
        self.snapshots_dir = root / "snapshots"
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.metadata = MetadataStore(root / "metadata.db")

    def close(self) -> None:
        self.metadata.close()

    def fs_dir(self, ident: int) -> Path:
        return self.snapshots_dir / str(ident) / "fs"

    def work_dir(self, ident: int) -> Path:
        return self.snapshots_dir / str(ident) / "work"

    # -- the snapshots API ----------------------------------------------------------

    def prepare(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        kind = remote.remote_kind(labels)
        if kind is not None:
            self._create_remote(kind, key, parent, labels)  # raises ALREADY_EXISTS once made
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def mounts(self, key: str) -> list[Mount]:
        snap = self.metadata.get(key)
        if snap.kind == Kind.COMMITTED:
            raise FailedPreconditionError(f"requested snapshot {key!r} not active or view")
        return self._mounts(snap, self.metadata.chain(snap))

    def commit(self, name: str, key: str, labels: Mapping[str, str]) -> None:
        active = self.metadata.get(key)
        usage = disk_usage(self.fs_dir(active.id)) if active.kind == Kind.ACTIVE else Usage(0, 0)
        with self.metadata.transaction() as db:
            MetadataStore.commit(db, name, key, labels, usage.size, usage.inodes)

    def remove(self, key: str) -> None:
        with self.metadata.transaction() as db:
            snap = MetadataStore.remove(db, key)
        self._remove_dirs(snap.id)

    def _create_remote(
        self, kind: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> NoReturn:
        """Make the Ketch layer's committed snapshot under ``key``; raise ALREADY_EXISTS."""
        target = labels[remote.LABEL_TARGET]
        ref = remote.image_reference(labels) if kind == "bootstrap" else ""
        with self.metadata.transaction() as db:
            snap = MetadataStore.create(db, Kind.COMMITTED, key, parent, labels, remote=True)
            self._make_dirs(snap.id, Kind.COMMITTED)
        if kind == "bootstrap":
            try:
                remote.mount_image(
                    ref,
                    self.fs_dir(snap.id),
                    self.cache_dir,
                    labels.get(remote.LABEL_KETCH_BOOTSTRAP, "?"),
                )
            except BaseException:
                with self.metadata.transaction() as db:
                    MetadataStore.remove(db, key)
                self._remove_dirs(snap.id)
                raise
        raise AlreadyExistsError(f"target snapshot {target!r}: Ketch {kind} layer")

    def stat(self, key: str) -> Snapshot:
        return self.metadata.get(key)

    def update(self, key: str, labels: Mapping[str, str], paths: list[str]) -> Snapshot:
        with self.metadata.transaction() as db:
            return MetadataStore.update_labels(db, key, labels, paths)

    def usage(self, key: str) -> Usage:
        snap = self.metadata.get(key)
        if snap.kind == Kind.ACTIVE:
            return disk_usage(self.fs_dir(snap.id))
        return Usage(snap.size, snap.inodes)

    def all(self) -> list[Snapshot]:
        return self.metadata.all()

    def reconcile(self) -> tuple[list[str], list[str]]:
        """At start: remount each Ketch bootstrap snapshot whose mount is missing (or whose
        daemon died), and unmount Ketch mounts under the root that no snapshot owns.
        Returns (remounted, removed) mountpoints; a failed remount is logged, not fatal."""
        owned: dict[str, Snapshot] = {
            str(self.fs_dir(snap.id)): snap
            for snap in self.metadata.all()
            if snap.kind == Kind.COMMITTED
            and snap.labels.get(remote.LABEL_KETCH_LAYER) == "bootstrap"
        }
        removed = []
        for point in _ketch_mounts_under(self.snapshots_dir):
            if point not in owned:
                remote.unmount_image(Path(point))
                removed.append(point)
        remounted = []
        for point, snap in owned.items():
            mountpoint = Path(point)
            record = read_record(mountpoint)
            if is_mounted(mountpoint) and record is not None and record.alive():
                continue
            try:
                remote.unmount_image(mountpoint)  # a dead daemon's mount
                remote.mount_image(
                    remote.image_reference(snap.labels),
                    mountpoint,
                    self.cache_dir,
                    snap.labels.get(remote.LABEL_KETCH_BOOTSTRAP, "?"),
                )
            except (SnapshotError, KetchError, OSError) as exc:
                log.error("reconcile: %s: remount failed: %s", snap.key, exc)
                continue
            remounted.append(point)
        return remounted, removed

    def cleanup(self) -> list[str]:
        """Remove the dirs of snapshots no row names; return their names."""
        owned = {str(snap.id) for snap in self.metadata.all()}
        removed = []
        for entry in sorted(os.listdir(self.snapshots_dir)):
            if entry not in owned and entry.isdigit():
                self._remove_dirs(int(entry))
                removed.append(entry)
        return removed

    # -- internals ------------------------------------------------------------------

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]) -> list[Mount]:
        with self.metadata.transaction() as db:
            snap = MetadataStore.create(db, kind, key, parent, labels)
            self._make_dirs(snap.id, kind)
        return self._mounts(snap, self.metadata.chain(snap))

    def _make_dirs(self, ident: int, kind: Kind) -> None:
        base = self.snapshots_dir / str(ident)
        try:
            # A stale dir of this id (a crash before its row was committed) is not ours.
            self._remove_dirs(ident)
            base.mkdir(mode=0o700)
            self.fs_dir(ident).mkdir(mode=0o755)
            if kind == Kind.ACTIVE:
                self.work_dir(ident).mkdir(mode=0o711)
        except BaseException:
            self._remove_dirs(ident)
            raise

    def _mounts(self, snap: Snapshot, parents: list[Snapshot]) -> list[Mount]:
        if not parents:
            mode = "ro" if snap.kind == Kind.VIEW else "rw"
            return [Mount("bind", str(self.fs_dir(snap.id)), (mode, "rbind"))]
        options = ["index=off"]
        if snap.kind == Kind.ACTIVE:
            options += [f"workdir={self.work_dir(snap.id)}", f"upperdir={self.fs_dir(snap.id)}"]
        elif len(parents) == 1:
            return [Mount("bind", str(self.fs_dir(parents[0].id)), ("ro", "rbind"))]
        options.append("lowerdir=" + ":".join(str(self.fs_dir(p.id)) for p in parents))
        return [Mount("overlay", "overlay", tuple(options))]

    def _remove_dirs(self, ident: int) -> None:
        base = self.snapshots_dir / str(ident)
        fs = self.fs_dir(ident)
        if is_mounted(fs):  # a Ketch bootstrap layer: never delete into the mount
            remote.unmount_image(fs)
            if is_mounted(fs):
                raise OSError(f"{fs}: still mounted, not removed")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(base)


def _ketch_mounts_under(directory: Path) -> list[str]:
    """Mountpoints of Ketch FUSE mounts below ``directory``, from /proc/self/mountinfo."""
    prefix = f"{directory}/"
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ")
            point = fields[4].encode().decode("unicode_escape")
            if point.startswith(prefix) and fields[fields.index("-") + 1] == "fuse.ketch":
                points.append(point)
    return points


def disk_usage(path: Path) -> Usage:
    """Bytes (allocated blocks) and inodes under ``path``, hard links counted once."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
    return Usage(size, len(seen))
