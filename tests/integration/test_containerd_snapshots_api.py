"""``ketch`` against containerd's own overlayfs snapshotter, call for call, through containerd.

The same sequences of snapshots API calls (fixed ones, then random ones from fixed seeds)
go to one containerd for the snapshotter ``overlayfs`` (the reference) and ``ketch``, in
one namespace, under one lease; each answer must match: the status code, Stat's name,
parent and kind, the shape of the mounts (types and option names, lower count), and the
keys List returns.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2

from ketch.snapshot.containerd_api import SNAPSHOTS, ContainerdAPI
from ketch.snapshot.protos.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from ketch.snapshot.protos.containerd.types import mount_pb2
from tests.fixtures.containerd import Containerd, containerd_fixture  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

KEYS = ("k1", "k2", "k3", "k4")
NAMES = ("n1", "n2", "n3")
Answer = tuple[object, ...]


def _mount_shape(mounts: list[mount_pb2.Mount]) -> Answer:
    shape: list[object] = []
    for m in mounts:
        options: list[str] = []
        for option in m.options:
            name, _, value = option.partition("=")
            if name == "lowerdir":
                options.append(f"lowerdir*{len(value.split(':'))}")
            elif name != "userxattr":  # overlayfs adds it when not root; same semantics
                options.append(name)
        shape.append((m.type, tuple(options)))
    return tuple(shape)


@dataclass
class Driver:
    api: ContainerdAPI
    snapshotter: str

    def call(self, op: str, *args: str) -> Answer:
        try:
            return ("OK", *self._call(op, *args))
        except grpc.RpcError as exc:
            return (exc.code().name,)

    def _call(self, op: str, *args: str) -> Answer:
        s = self.snapshotter
        api = self.api
        if op in ("prepare", "view"):
            key, parent = args
            labels = {"test": op}
            if op == "prepare":
                reply = api.unary(
                    SNAPSHOTS,
                    "Prepare",
                    pb.PrepareSnapshotRequest(snapshotter=s, key=key, parent=parent, labels=labels),
                    pb.PrepareSnapshotResponse,
                )
            else:
                reply = api.unary(  # type: ignore[assignment]
                    SNAPSHOTS,
                    "View",
                    pb.ViewSnapshotRequest(snapshotter=s, key=key, parent=parent, labels=labels),
                    pb.ViewSnapshotResponse,
                )
            return _mount_shape(list(reply.mounts))
        if op == "mounts":
            got = api.unary(
                SNAPSHOTS, "Mounts", pb.MountsRequest(snapshotter=s, key=args[0]), pb.MountsResponse
            )
            return _mount_shape(list(got.mounts))
        if op == "commit":
            name, key = args
            api.unary(
                SNAPSHOTS,
                "Commit",
                pb.CommitSnapshotRequest(snapshotter=s, name=name, key=key, labels={"c": name}),
                empty_pb2.Empty,
            )
            return ()
        if op == "remove":
            api.unary(
                SNAPSHOTS,
                "Remove",
                pb.RemoveSnapshotRequest(snapshotter=s, key=args[0]),
                empty_pb2.Empty,
            )
            return ()
        if op == "stat":
            info = api.unary(
                SNAPSHOTS,
                "Stat",
                pb.StatSnapshotRequest(snapshotter=s, key=args[0]),
                pb.StatSnapshotResponse,
            ).info
            return (info.name, info.parent, info.kind, tuple(sorted(info.labels.items())))
        if op == "update":
            info = api.unary(
                SNAPSHOTS,
                "Update",
                pb.UpdateSnapshotRequest(
                    snapshotter=s,
                    info=pb.Info(name=args[0], labels={"u": "1", "test": ""}),
                    update_mask=field_mask_pb2.FieldMask(paths=["labels.u", "labels.test"]),
                ),
                pb.UpdateSnapshotResponse,
            ).info
            return (info.name, tuple(sorted(info.labels.items())))
        if op == "usage":
            api.unary(
                SNAPSHOTS, "Usage", pb.UsageRequest(snapshotter=s, key=args[0]), pb.UsageResponse
            )
            return ()
        if op == "list":
            names: set[tuple[str, str, int]] = set()
            for batch in api.stream(
                SNAPSHOTS, "List", pb.ListSnapshotsRequest(snapshotter=s), pb.ListSnapshotsResponse
            ):
                names.update((i.name, i.parent, i.kind) for i in batch.info)
            return (tuple(sorted(names)),)
        raise ValueError(op)


FIXED: list[tuple[str, ...]] = [
    ("stat", "k1"),
    ("mounts", "k1"),
    ("remove", "k1"),
    ("commit", "n1", "k1"),
    ("prepare", "k1", "missing"),
    ("prepare", "k1", ""),
    ("prepare", "k1", ""),
    ("mounts", "k1"),
    ("view", "k2", "k1"),
    ("commit", "n1", "k1"),
    ("commit", "n1", "k1"),
    ("mounts", "n1"),
    ("stat", "n1"),
    ("prepare", "k2", "n1"),
    ("view", "k3", "n1"),
    ("commit", "n2", "k3"),
    ("commit", "n2", "k2"),
    ("prepare", "k3", "n2"),
    ("view", "k4", "n2"),
    ("mounts", "k4"),
    ("remove", "n1"),
    ("remove", "n2"),
    ("update", "k3"),
    ("usage", "n2"),
    ("list",),
    ("remove", "k3"),
    ("remove", "k4"),
    ("remove", "n2"),
    ("remove", "n1"),
    ("list",),
]


def _random_ops(seed: int, count: int) -> list[tuple[str, ...]]:
    rng = random.Random(seed)
    anything = (*KEYS, *NAMES)
    choices: list[Callable[[], tuple[str, ...]]] = [
        lambda: ("prepare", rng.choice(KEYS), rng.choice(("", *NAMES, *KEYS))),
        lambda: ("view", rng.choice(KEYS), rng.choice(("", *NAMES))),
        lambda: ("commit", rng.choice(NAMES), rng.choice(KEYS)),
        lambda: ("remove", rng.choice(anything)),
        lambda: ("stat", rng.choice(anything)),
        lambda: ("mounts", rng.choice(anything)),
        lambda: ("update", rng.choice(anything)),
        lambda: ("usage", rng.choice(anything)),
        lambda: ("list",),
    ]
    return [rng.choice(choices)() for _ in range(count)]


def _compare(containerd: Containerd, namespace: str, ops: list[tuple[str, ...]]) -> set[str]:
    """Run ``ops`` on both; return the status codes the reference answered."""
    codes: set[str] = set()
    with ContainerdAPI(containerd.address, namespace) as api, api.lease(f"lease-{namespace}"):
        reference = Driver(api, "overlayfs")
        ketch = Driver(api, "ketch")
        for step, (op, *args) in enumerate(ops):
            expected = reference.call(op, *args)
            found = ketch.call(op, *args)
            codes.add(str(expected[0]))
            assert found == expected, f"step {step} {op}{tuple(args)}: overlayfs {expected}"
        # Leave nothing behind: children first.
        for name in (*KEYS, *NAMES, *KEYS, *NAMES, *KEYS, *NAMES):
            reference.call("remove", name)
            ketch.call("remove", name)
        assert ketch.call("list") == reference.call("list") == ("OK", ())
    return codes


def test_fixed_sequence_matches_overlayfs(containerd: Containerd) -> None:
    codes = _compare(containerd, "fixed", FIXED)
    assert codes == {
        "OK",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "INVALID_ARGUMENT",
    }, codes


def test_random_sequences_match_overlayfs(containerd: Containerd) -> None:
    codes: set[str] = set()
    for seed in range(6):
        codes |= _compare(containerd, f"random{seed}", _random_ops(seed, 80))
    assert {
        "OK",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "INVALID_ARGUMENT",
    } <= codes, codes
