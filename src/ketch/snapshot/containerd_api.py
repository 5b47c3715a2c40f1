"""A small client of containerd's own gRPC API (snapshots, content, images, leases).

Calls carry containerd's namespace header and, inside ``lease()``, its lease header, as
containerd's Go client does. Method paths come from the generated descriptors, so the
package names are containerd's own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import message

from ketch.snapshot.protos.containerd.services.content.v1 import content_pb2
from ketch.snapshot.protos.containerd.services.images.v1 import images_pb2
from ketch.snapshot.protos.containerd.services.leases.v1 import leases_pb2
from ketch.snapshot.protos.containerd.services.snapshots.v1 import snapshots_pb2

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
DEFAULT_ADDRESS = Path("/run/containerd/containerd.sock")

SNAPSHOTS = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"].full_name
CONTENT = content_pb2.DESCRIPTOR.services_by_name["Content"].full_name
IMAGES = images_pb2.DESCRIPTOR.services_by_name["Images"].full_name
LEASES = leases_pb2.DESCRIPTOR.services_by_name["Leases"].full_name

_Resp = TypeVar("_Resp", bound=message.Message)


class ContainerdAPI:
    """containerd's API on ``address`` in ``namespace``."""

    def __init__(self, address: Path, namespace: str = "default", timeout: float = 120.0) -> None:
        self.address = address
        self.namespace = namespace
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix:{address}")
        self._lease: str | None = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ContainerdAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        headers: tuple[tuple[str, str | bytes], ...] = ((NAMESPACE_HEADER, self.namespace),)
        if self._lease is not None:
            headers += ((LEASE_HEADER, self._lease),)
        return headers

    def unary(
        self, service: str, method: str, request: message.Message, reply: type[_Resp]
    ) -> _Resp:
        call = self.channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=_serialize,
            response_deserializer=reply.FromString,
        )
        result: _Resp = call(request, timeout=self.timeout, metadata=self.metadata())
        return result

    def stream(
        self, service: str, method: str, request: message.Message, reply: type[_Resp]
    ) -> Iterator[_Resp]:
        call = self.channel.unary_stream(
            f"/{service}/{method}",
            request_serializer=_serialize,
            response_deserializer=reply.FromString,
        )
        responses: Iterator[_Resp] = call(request, timeout=self.timeout, metadata=self.metadata())
        yield from responses

    @contextlib.contextmanager
    def lease(self, lease_id: str, labels: dict[str, str] | None = None) -> Iterator[str]:
        """A lease held for the block: what is written under it is safe from GC until the
        image record and the GC labels reference it; deleted when the block ends, with a
        synchronous GC (what nothing else references goes, e.g. after a failure)."""
        from google.protobuf import empty_pb2  # noqa: PLC0415

        created = self.unary(
            LEASES,
            "Create",
            leases_pb2.CreateRequest(id=lease_id, labels=labels or {}),
            leases_pb2.CreateResponse,
        )
        self._lease = created.lease.id
        try:
            yield created.lease.id
        finally:
            self._lease = None
            self.unary(
                LEASES,
                "Delete",
                leases_pb2.DeleteRequest(id=created.lease.id, sync=True),
                empty_pb2.Empty,
            )


def _serialize(request: Any) -> bytes:
    data: bytes = request.SerializeToString()
    return data
