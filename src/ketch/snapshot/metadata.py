"""The snapshotter's metadata: one SQLite table of snapshots (key, parent, kind, labels, times).

Rules follow containerd's snapshot storage (snapshots/storage/bolt.go), so that the answers
match its overlayfs snapshotter: a key is unique; a parent must exist (NOT_FOUND) and be
committed (INVALID_ARGUMENT); only an active snapshot commits (FAILED_PRECONDITION), under a
free name (ALREADY_EXISTS); a snapshot with children is not removed (FAILED_PRECONDITION).

Every change is one transaction under one lock: gRPC handlers run on a thread pool, and
parallel unpacks Prepare and Commit concurrently.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

MAX_LABEL_BYTES = 4096  # containerd's limit on one label (key + value)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL,
    kind INTEGER NOT NULL,
    labels TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


class Kind(enum.IntEnum):
    """As containerd.services.snapshots.v1.Kind."""

    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


class SnapshotError(Exception):
    """A request the snapshot rules refuse; ``code`` names the gRPC status."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


class NotFoundError(SnapshotError):
    code = "NOT_FOUND"


class AlreadyExistsError(SnapshotError):
    code = "ALREADY_EXISTS"


class FailedPreconditionError(SnapshotError):
    code = "FAILED_PRECONDITION"


class InvalidArgumentError(SnapshotError):
    code = "INVALID_ARGUMENT"


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: int
    key: str  # the name, for a committed snapshot
    parent: str
    kind: Kind
    labels: dict[str, str] = field(default_factory=dict)
    created_ns: int = 0
    updated_ns: int = 0
    size: int = 0  # bytes, recorded at commit
    inodes: int = 0


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise InvalidArgumentError(f"label {key[:64]!r}: longer than {MAX_LABEL_BYTES} bytes")
    return dict(labels)


class MetadataStore:
    """The snapshots table of ``path`` (created on first use)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- reads ----------------------------------------------------------------------

    def get(self, key: str) -> Snapshot:
        with self._lock:
            return _get(self._db, key)

    def all(self) -> list[Snapshot]:
        with self._lock:
            rows = self._db.execute(_SELECT + " ORDER BY id").fetchall()
        return [_snapshot(row) for row in rows]

    def chain(self, snap: Snapshot) -> list[Snapshot]:
        """The parents of ``snap``, nearest first."""
        out: list[Snapshot] = []
        with self._lock:
            parent = snap.parent
            while parent:
                above = _get(self._db, parent, missing="missing parent")
                out.append(above)
                parent = above.parent
        return out

    # -- changes (each inside ``transaction()``) ------------------------------------

    @staticmethod
    def create(
        db: sqlite3.Connection,
        kind: Kind,
        key: str,
        parent: str,
        labels: Mapping[str, str],
        *,
        remote: bool = False,
    ) -> Snapshot:
        """A new snapshot; ``remote``: made committed at once (a remote layer)."""
        if kind not in (Kind.ACTIVE, Kind.VIEW) and not remote:
            raise InvalidArgumentError(f"snapshot {key}: only active or view snapshots are created")
        if not key:
            raise InvalidArgumentError("snapshot key is empty")
        checked = check_labels(labels)
        if parent:
            above = _get(db, parent, missing="missing parent")
            if above.kind != Kind.COMMITTED:
                raise InvalidArgumentError(f"parent {parent!r} is not a committed snapshot")
        if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
            raise AlreadyExistsError(f"snapshot {key}: already exists")
        now = time.time_ns()
        cur = db.execute(
            "INSERT INTO snapshots (key, parent, kind, labels, created_ns, updated_ns)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key, parent, int(kind), json.dumps(checked, sort_keys=True), now, now),
        )
        if cur.lastrowid is None:
            raise RuntimeError(f"snapshot {key}: no row id")
        return _get(db, key)

    @staticmethod
    def commit(
        db: sqlite3.Connection,
        name: str,
        key: str,
        labels: Mapping[str, str],
        size: int,
        inodes: int,
    ) -> Snapshot:
        checked = check_labels(labels)
        if db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
            raise AlreadyExistsError(f"snapshot {name}: already exists")
        active = _get(db, key, missing="failed to get active snapshot")
        if active.kind != Kind.ACTIVE:
            raise FailedPreconditionError(f"snapshot {key!r} is not active")
        db.execute(
            "UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated_ns = ?, size = ?,"
            " inodes = ? WHERE id = ?",
            (
                name,
                int(Kind.COMMITTED),
                json.dumps(checked, sort_keys=True),
                time.time_ns(),
                size,
                inodes,
                active.id,
            ),
        )
        return _get(db, name)

    @staticmethod
    def remove(db: sqlite3.Connection, key: str) -> Snapshot:
        snap = _get(db, key)
        if db.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (key,)).fetchone():
            raise FailedPreconditionError(f"snapshot {key}: cannot remove snapshot with child")
        db.execute("DELETE FROM snapshots WHERE id = ?", (snap.id,))
        return snap

    @staticmethod
    def update_labels(
        db: sqlite3.Connection, key: str, labels: Mapping[str, str], paths: list[str]
    ) -> Snapshot:
        snap = _get(db, key)
        updated = dict(snap.labels)
        if not paths:
            updated = dict(labels)
        for path in paths:
            if path.startswith("labels."):
                label = path.removeprefix("labels.")
                if label in labels:
                    updated[label] = labels[label]
                else:
                    updated.pop(label, None)
            elif path == "labels":
                updated = dict(labels)
            else:
                raise InvalidArgumentError(f"cannot update {path!r} field on snapshot {key!r}")
        checked = check_labels(updated)
        db.execute(
            "UPDATE snapshots SET labels = ?, updated_ns = ? WHERE id = ?",
            (json.dumps(checked, sort_keys=True), time.time_ns(), snap.id),
        )
        return _get(db, key)


_SELECT = (
    "SELECT id, key, parent, kind, labels, created_ns, updated_ns, size, inodes FROM snapshots"
)


def _get(db: sqlite3.Connection, key: str, missing: str = "snapshot") -> Snapshot:
    row = db.execute(_SELECT + " WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise NotFoundError(f"{missing} {key!r}: does not exist")
    return _snapshot(row)


def _snapshot(row: tuple[int, str, str, int, str, int, int, int, int]) -> Snapshot:
    ident, key, parent, kind, labels, created, updated, size, inodes = row
    return Snapshot(
        id=ident,
        key=key,
        parent=parent,
        kind=Kind(kind),
        labels=json.loads(labels),
        created_ns=created,
        updated_ns=updated,
        size=size,
        inodes=inodes,
    )
