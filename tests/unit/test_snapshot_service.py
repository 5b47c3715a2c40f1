"""``ketch snapshotter``'s gRPC service called directly (no containerd in front to filter).

The answers follow containerd's snapshot storage rules (snapshots/storage/bolt.go); a
failure inside a handler is INTERNAL and the server keeps serving, with the metadata left
as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2, field_mask_pb2

from ketch.snapshot.containerd_api import SNAPSHOTS, ContainerdAPI
from ketch.snapshot.grpc_service import Running, serve
from ketch.snapshot.protos.containerd.services.snapshots.v1 import snapshots_pb2 as pb


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ContainerdAPI, Path]]:
    sock = tmp_path / "s.sock"
    running: Running = serve(sock, tmp_path / "root")
    api = ContainerdAPI(sock, timeout=10)
    try:
        yield api, tmp_path / "root"
    finally:
        api.close()
        running.stop(0)


def _code(call: object) -> str:
    with pytest.raises(grpc.RpcError) as info:
        if callable(call):
            call()
    code: grpc.StatusCode = info.value.code()
    return code.name


def prepare(api: ContainerdAPI, key: str, parent: str = "", **labels: str) -> list[tuple[str, ...]]:
    reply = api.unary(
        SNAPSHOTS,
        "Prepare",
        pb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels),
        pb.PrepareSnapshotResponse,
    )
    return [(m.type, m.source, *m.options) for m in reply.mounts]


def view(api: ContainerdAPI, key: str, parent: str = "") -> list[tuple[str, ...]]:
    reply = api.unary(
        SNAPSHOTS, "View", pb.ViewSnapshotRequest(key=key, parent=parent), pb.ViewSnapshotResponse
    )
    return [(m.type, m.source, *m.options) for m in reply.mounts]


def mounts(api: ContainerdAPI, key: str) -> list[tuple[str, ...]]:
    reply = api.unary(SNAPSHOTS, "Mounts", pb.MountsRequest(key=key), pb.MountsResponse)
    return [(m.type, m.source, *m.options) for m in reply.mounts]


def commit(api: ContainerdAPI, name: str, key: str) -> None:
    api.unary(SNAPSHOTS, "Commit", pb.CommitSnapshotRequest(name=name, key=key), empty_pb2.Empty)


def remove(api: ContainerdAPI, key: str) -> None:
    api.unary(SNAPSHOTS, "Remove", pb.RemoveSnapshotRequest(key=key), empty_pb2.Empty)


def stat(api: ContainerdAPI, key: str) -> pb.Info:
    return api.unary(
        SNAPSHOTS, "Stat", pb.StatSnapshotRequest(key=key), pb.StatSnapshotResponse
    ).info


def list_all(api: ContainerdAPI) -> list[pb.Info]:
    return [
        info
        for batch in api.stream(
            SNAPSHOTS, "List", pb.ListSnapshotsRequest(), pb.ListSnapshotsResponse
        )
        for info in batch.info
    ]


def test_status_codes(server: tuple[ContainerdAPI, Path]) -> None:
    api, _ = server
    assert _code(lambda: stat(api, "default/1/nope")) == "NOT_FOUND"
    assert _code(lambda: mounts(api, "default/1/nope")) == "NOT_FOUND"
    assert _code(lambda: remove(api, "default/1/nope")) == "NOT_FOUND"
    assert _code(lambda: commit(api, "default/2/n", "default/1/nope")) == "NOT_FOUND"
    assert _code(lambda: prepare(api, "default/1/a", "default/9/missing")) == "NOT_FOUND"
    prepare(api, "default/1/a")
    assert _code(lambda: prepare(api, "default/1/a")) == "ALREADY_EXISTS"
    # A parent must be committed.
    assert _code(lambda: prepare(api, "default/1/b", "default/1/a")) == "INVALID_ARGUMENT"
    view(api, "default/1/v")
    assert _code(lambda: commit(api, "default/2/n", "default/1/v")) == "FAILED_PRECONDITION"
    commit(api, "default/2/layer", "default/1/a")
    # A second Commit of one key: the key is gone.
    assert _code(lambda: commit(api, "default/2/other", "default/1/a")) == "NOT_FOUND"
    assert _code(lambda: mounts(api, "default/2/layer")) == "FAILED_PRECONDITION"
    prepare(api, "default/3/c")
    assert _code(lambda: commit(api, "default/2/layer", "default/3/c")) == "ALREADY_EXISTS"
    prepare(api, "default/4/child", "default/2/layer")
    assert _code(lambda: remove(api, "default/2/layer")) == "FAILED_PRECONDITION"
    long_label = {"k": "x" * 5000}
    assert _code(lambda: prepare(api, "default/5/l", **long_label)) == "INVALID_ARGUMENT"
    update = pb.UpdateSnapshotRequest(
        info=pb.Info(name="default/2/layer", parent="x"),
        update_mask=field_mask_pb2.FieldMask(paths=["parent"]),
    )
    assert (
        _code(lambda: api.unary(SNAPSHOTS, "Update", update, pb.UpdateSnapshotResponse))
        == "INVALID_ARGUMENT"
    )
    # Nothing refused above left a row behind.
    assert sorted(i.name for i in list_all(api)) == [
        "default/1/v",
        "default/2/layer",
        "default/3/c",
        "default/4/child",
    ]


def test_mounts_and_round_trip(server: tuple[ContainerdAPI, Path]) -> None:
    api, root = server
    bottom = prepare(api, "ns/1/bottom", env="x")
    assert bottom == mounts(api, "ns/1/bottom")
    (kind, source, *options) = bottom[0]
    assert (kind, options) == ("bind", ["rw", "rbind"])
    assert Path(source).is_relative_to(root)
    commit(api, "ns/2/sha256:bottom", "ns/1/bottom")
    prepare(api, "ns/3/mid", "ns/2/sha256:bottom")
    commit(api, "ns/4/sha256:mid", "ns/3/mid")
    top = prepare(api, "ns/5/top", "ns/4/sha256:mid")
    assert top == mounts(api, "ns/5/top")
    kind, source, *options = top[0]
    assert (kind, source) == ("overlay", "overlay")
    assert options[0] == "index=off"
    assert [o.split("=")[0] for o in options] == ["index", "workdir", "upperdir", "lowerdir"]
    lowers = options[3].removeprefix("lowerdir=").split(":")
    assert len(lowers) == 2  # nearest first
    assert view(api, "ns/6/v1", "ns/2/sha256:bottom")[0][0::2] == ("bind", "ro")
    assert view(api, "ns/7/v2", "ns/4/sha256:mid")[0][0] == "overlay"

    info = stat(api, "ns/4/sha256:mid")
    assert (info.name, info.parent, info.kind) == ("ns/4/sha256:mid", "ns/2/sha256:bottom", 3)
    assert stat(api, "ns/5/top").kind == 2
    assert stat(api, "ns/6/v1").kind == 1
    assert dict(stat(api, "ns/2/sha256:bottom").labels) == {}
    assert dict(stat(api, "ns/5/top").labels) == {}
    assert dict(stat(api, "ns/7/v2").labels) == {}

    # The writable top holds a file: Usage counts it.
    upper = next(o for o in top[0][2:] if o.startswith("upperdir=")).removeprefix("upperdir=")
    Path(upper, "f").write_bytes(b"x" * 10000)
    usage = api.unary(SNAPSHOTS, "Usage", pb.UsageRequest(key="ns/5/top"), pb.UsageResponse)
    assert usage.size >= 10000
    assert usage.inodes == 1


def test_list_returns_every_snapshot_in_batches(server: tuple[ContainerdAPI, Path]) -> None:
    api, _ = server
    for i in range(250):
        prepare(api, f"ns/{i}/k")
    names = [info.name for info in list_all(api)]
    assert sorted(names) == sorted(f"ns/{i}/k" for i in range(250))


def test_internal_error_keeps_serving_and_metadata_consistent(
    server: tuple[ContainerdAPI, Path],
) -> None:
    api, root = server
    prepare(api, "ns/1/before")
    snapshots = root / "snapshots"
    os.rename(snapshots, root / "aside")
    snapshots.write_bytes(b"not a dir")
    assert _code(lambda: prepare(api, "ns/2/broken")) == "INTERNAL"
    snapshots.unlink()
    os.rename(root / "aside", snapshots)
    # Still serving, and the failed Prepare left no row.
    assert _code(lambda: stat(api, "ns/2/broken")) == "NOT_FOUND"
    prepare(api, "ns/2/broken")
    assert sorted(i.name for i in list_all(api)) == ["ns/1/before", "ns/2/broken"]


def test_metadata_survives_restart(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    running = serve(sock, tmp_path / "root")
    with ContainerdAPI(sock, timeout=10) as api:
        prepare(api, "ns/1/a", label="v")
        commit(api, "ns/2/layer", "ns/1/a")
    running.stop(0)
    running = serve(sock, tmp_path / "root")
    try:
        with ContainerdAPI(sock, timeout=10) as api:
            info = stat(api, "ns/2/layer")
            assert (info.name, info.kind) == ("ns/2/layer", 3)
    finally:
        running.stop(0)


@pytest.mark.parametrize(
    "ref", ["oci:/etc", "s3://bucket/prefix:tag", "docker://host/repo:tag\nx", "/etc/passwd"]
)
def test_remote_layer_refuses_non_registry_references(
    server: tuple[ContainerdAPI, Path], ref: str
) -> None:
    api, root = server
    labels = {
        "containerd.io/snapshot.ref": "sha256:" + "a" * 64,
        "containerd.io/snapshot/ketch.layer": "bootstrap",
        "containerd.io/snapshot/ketch.ref": ref,
    }
    assert _code(lambda: prepare(api, "ns/1/extract", **labels)) == "INVALID_ARGUMENT"
    assert list_all(api) == []
    assert list((root / "snapshots").iterdir()) == []


def test_concurrent_prepares_and_commits_stay_consistent(
    server: tuple[ContainerdAPI, Path],
) -> None:
    api, root = server
    prepare(api, "ns/0/base")
    commit(api, "ns/0/layer", "ns/0/base")

    def one(i: int) -> None:
        prepare(api, f"ns/{i}/active", "ns/0/layer")
        commit(api, f"ns/{i}/committed", f"ns/{i}/active")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(1, 41)))
    infos = list_all(api)
    assert sorted(i.name for i in infos) == sorted(
        ["ns/0/layer", *(f"ns/{i}/committed" for i in range(1, 41))]
    )
    assert all(i.parent == "ns/0/layer" for i in infos if i.name != "ns/0/layer")
    assert len(list((root / "snapshots").iterdir())) == 41
