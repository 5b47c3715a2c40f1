"""containerd.services.snapshots.v1.Snapshots over gRPC: a thin adapter over ``Snapshotter``.

Each handler turns the request into one ``Snapshotter`` call and its answer into the
response. A refused request (``SnapshotError``) becomes its gRPC status with the one-line
reason; anything else becomes INTERNAL with one log line: no handler ends the process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from ketch.daemon.state import DEFAULT_CACHE_DIR
from ketch.snapshot.metadata import Snapshot, SnapshotError
from ketch.snapshot.protos.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from ketch.snapshot.protos.containerd.types import mount_pb2
from ketch.snapshot.snapshotter import Mount, Snapshotter

SERVICE = pb.DESCRIPTOR.services_by_name["Snapshots"]
LIST_BATCH = 100  # snapshots per List message (containerd's own sends 100)

log = logging.getLogger("ketch.snapshot")

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def _mounts(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=list(m.options)) for m in mounts]


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def info(snap: Snapshot) -> pb.Info:
    return pb.Info(
        name=snap.key,
        parent=snap.parent,
        kind=int(snap.kind),  # type: ignore[arg-type]
        created_at=_timestamp(snap.created_ns),
        updated_at=_timestamp(snap.updated_ns),
        labels=snap.labels,
    )


class SnapshotsService:
    """The handlers of the Snapshots service, by method name."""

    def __init__(self, snapshotter: Snapshotter) -> None:
        self.snapshotter = snapshotter

    def Prepare(self, req: pb.PrepareSnapshotRequest) -> pb.PrepareSnapshotResponse:  # noqa: N802
        mounts = self.snapshotter.prepare(req.key, req.parent, dict(req.labels))
        return pb.PrepareSnapshotResponse(mounts=_mounts(mounts))

    def View(self, req: pb.ViewSnapshotRequest) -> pb.ViewSnapshotResponse:  # noqa: N802
        mounts = self.snapshotter.view(req.key, req.parent, dict(req.labels))
        return pb.ViewSnapshotResponse(mounts=_mounts(mounts))

    def Mounts(self, req: pb.MountsRequest) -> pb.MountsResponse:  # noqa: N802
        return pb.MountsResponse(mounts=_mounts(self.snapshotter.mounts(req.key)))

    def Commit(self, req: pb.CommitSnapshotRequest) -> empty_pb2.Empty:  # noqa: N802
        self.snapshotter.commit(req.name, req.key, dict(req.labels))
        return empty_pb2.Empty()

    def Remove(self, req: pb.RemoveSnapshotRequest) -> empty_pb2.Empty:  # noqa: N802
        self.snapshotter.remove(req.key)
        return empty_pb2.Empty()

    def Stat(self, req: pb.StatSnapshotRequest) -> pb.StatSnapshotResponse:  # noqa: N802
        return pb.StatSnapshotResponse(info=info(self.snapshotter.stat(req.key)))

    def Update(self, req: pb.UpdateSnapshotRequest) -> pb.UpdateSnapshotResponse:  # noqa: N802
        paths = list(req.update_mask.paths) if req.HasField("update_mask") else []
        snap = self.snapshotter.update(req.info.name, dict(req.info.labels), paths)
        return pb.UpdateSnapshotResponse(info=info(snap))

    def Usage(self, req: pb.UsageRequest) -> pb.UsageResponse:  # noqa: N802
        usage = self.snapshotter.usage(req.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    def Cleanup(self, req: pb.CleanupRequest) -> empty_pb2.Empty:  # noqa: N802
        removed = self.snapshotter.cleanup()
        if removed:
            log.info("cleanup: removed %d unowned snapshot dirs", len(removed))
        return empty_pb2.Empty()

    def List(self, req: pb.ListSnapshotsRequest) -> Iterator[pb.ListSnapshotsResponse]:  # noqa: N802
        # Every snapshot, filters ignored (containerd filters again): one List leaving a
        # snapshot out makes containerd's GC treat it as garbage.
        snaps = self.snapshotter.all()
        for start in range(0, len(snaps), LIST_BATCH):
            yield pb.ListSnapshotsResponse(
                info=[info(s) for s in snaps[start : start + LIST_BATCH]]
            )


def _guard(name: str, handler: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return handler(request)
        except SnapshotError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except Exception as exc:  # a bug or an I/O failure: one line, and serve on
            log.error("%s: internal error: %s: %s", name, type(exc).__name__, exc)
            context.abort(grpc.StatusCode.INTERNAL, f"{name}: {type(exc).__name__}: {exc}")

    return unary


def _guard_stream(
    name: str, handler: Callable[[Any], Iterator[Any]]
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from handler(request)
        except SnapshotError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except Exception as exc:
            log.error("%s: internal error: %s: %s", name, type(exc).__name__, exc)
            context.abort(grpc.StatusCode.INTERNAL, f"{name}: {type(exc).__name__}: {exc}")

    return stream


def generic_handler(service: SnapshotsService) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        req_class = _message_class(method.input_type.full_name)
        resp_class = _message_class(method.output_type.full_name)
        handler = getattr(service, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _guard_stream(method.name, handler),
                request_deserializer=req_class.FromString,
                response_serializer=resp_class.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guard(method.name, handler),
                request_deserializer=req_class.FromString,
                response_serializer=resp_class.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


def _message_class(full_name: str) -> Any:
    if full_name == "google.protobuf.Empty":
        return empty_pb2.Empty
    return getattr(pb, full_name.rsplit(".", 1)[1])


class Running:
    """A started snapshotter server."""

    def __init__(self, server: grpc.Server, snapshotter: Snapshotter) -> None:
        self.server = server
        self.snapshotter = snapshotter

    def stop(self, grace: float = 5.0) -> None:
        self.server.stop(grace).wait()
        self.snapshotter.close()


def serve(
    address: Path, root: Path, cache_dir: Path = DEFAULT_CACHE_DIR, workers: int = 8
) -> Running:
    """Start serving ``root``'s snapshots on the unix socket ``address``; Ketch layers are
    mounted with the chunk cache ``cache_dir``."""
    address.parent.mkdir(parents=True, exist_ok=True)
    if address.is_socket():
        address.unlink()
    snapshotter = Snapshotter(root, cache_dir)
    # Before serving (and before any gRPC thread exists): the mounts match the metadata.
    remounted, removed = snapshotter.reconcile()
    for point in remounted:
        log.info("reconcile: remounted %s", point)
    for point in removed:
        log.info("reconcile: unmounted %s (no snapshot owns it)", point)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((generic_handler(SnapshotsService(snapshotter)),))
    old_umask = os.umask(0o077)  # the socket: root's only, as containerd's own
    try:
        if server.add_insecure_port(f"unix:{address}") == 0:
            raise OSError(f"{address}: cannot listen")
        server.start()
    finally:
        os.umask(old_umask)
    return Running(server, snapshotter)
