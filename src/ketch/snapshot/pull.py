"""``ketch containerd pull``: a Ketch image into containerd, unpacked as remote snapshots.

Stock ``ctr images pull`` passes no labels to the snapshotter, so it cannot tell Ketch
layers apart. This does what ``ctr-remote image rpull`` and ``soci image rpull`` do, over
containerd's own API and under one lease (released at the end):

1. the manifest and the config into containerd's content store, with containerd's GC
   labels (the manifest references its config; the config its top snapshot), so GC keeps
   them and ``ctr run`` finds the config;
2. one snapshot Prepare per layer, bottom first, each with ``containerd.io/snapshot.ref``
   (the layer's chain ID), the layer's ``containerd.io/snapshot/`` annotations and the
   image pinned by digest: the snapshotter answers ALREADY_EXISTS (a remote snapshot);
3. the image record (``HOST/REPO:TAG``, as ``ctr`` names registry images).

A failure leaves nothing: the lease is deleted synchronously, and containerd's GC takes
what it held (content, the snapshots made so far).

No layer blob is downloaded: only the manifest and config are read here, and the FUSE mount
the snapshotter makes reads the bootstrap, then chunks on demand.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from ketch.config import StoreOptions
from ketch.errors import StorageError, UnsupportedError, UsageError
from ketch.format.digests import sha256_hex
from ketch.image.layout import bootstrap_layer
from ketch.oci.manifest import Manifest, load_json
from ketch.oci.reference import RegistryReference, parse_reference
from ketch.snapshot.containerd_api import CONTENT, IMAGES, SNAPSHOTS, ContainerdAPI
from ketch.snapshot.protos.containerd.services.content.v1 import content_pb2
from ketch.snapshot.protos.containerd.services.images.v1 import images_pb2
from ketch.snapshot.protos.containerd.services.snapshots.v1 import snapshots_pb2
from ketch.snapshot.protos.containerd.types import descriptor_pb2
from ketch.snapshot.remote import LABEL_KETCH_REF, LABEL_TARGET
from ketch.storage.open import open_store
from ketch.storage.store import MAX_CONFIG_SIZE

SNAPSHOT_LABEL_PREFIX = "containerd.io/snapshot/"
GC_CONFIG = "containerd.io/gc.ref.content.config"
GC_SNAPSHOT = "containerd.io/gc.ref.snapshot."  # + snapshotter name


@dataclass(frozen=True, slots=True)
class PullResult:
    image: str  # containerd's image name
    manifest_digest: str
    chain_ids: list[str]
    snapshotter: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "manifest": self.manifest_digest,
            "chain_ids": self.chain_ids,
            "snapshotter": self.snapshotter,
            "seconds": self.seconds,
        }


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain IDs of a layer stack (image spec, config.md "Layer ChainID")."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if chains:
            chains.append(sha256_hex(f"{chains[-1]} {diff_id}".encode()))
        else:
            chains.append(diff_id)
    return chains


def _diff_ids(config: dict[str, Any], manifest: Manifest, where: str) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if (
        not isinstance(diff_ids, list)
        or len(diff_ids) != len(manifest.layers)
        or not all(isinstance(d, str) and d.startswith("sha256:") for d in diff_ids)
    ):
        raise UnsupportedError(
            f"{where}: config rootfs.diff_ids: expected {len(manifest.layers)} sha256 digests"
        )
    return diff_ids


def pull(
    reference: str,
    options: StoreOptions,
    api: ContainerdAPI,
    snapshotter: str = "ketch",
) -> PullResult:
    started = time.monotonic()
    transports = ("docker://", "oci:", "s3://")
    ref = parse_reference(
        reference if reference.startswith(transports) else f"docker://{reference}"
    )
    if not isinstance(ref, RegistryReference):
        raise UsageError(f"{reference}: containerd pulls from a registry: docker://HOST/REPO:TAG")
    store, tag = open_store(ref, options)
    descriptor, manifest, manifest_bytes = store.resolve(tag)
    where = str(ref)
    bootstrap_layer(manifest, where)  # a Ketch image, or a one-line error
    config_bytes = store.read_blob(manifest.config.digest, max_size=MAX_CONFIG_SIZE)
    diff_ids = _diff_ids(load_json(config_bytes, f"{where} config"), manifest, where)
    chains = chain_ids(diff_ids)
    name = f"{ref.registry}/{ref.repository}" + (f"@{ref.digest}" if ref.digest else f":{ref.tag}")
    pinned = f"docker://{ref.registry}/{ref.repository}@{descriptor.digest}"

    with api.lease(f"ketch-pull-{uuid.uuid4().hex}", {"containerd.io/gc.expire": _expiry()}):
        _write_content(
            api, config_bytes, manifest.config.digest, {GC_SNAPSHOT + snapshotter: chains[-1]}
        )
        _write_content(api, manifest_bytes, descriptor.digest, {GC_CONFIG: manifest.config.digest})
        parent = ""
        for layer, chain in zip(manifest.layers, chains, strict=True):
            labels = {
                k: v for k, v in layer.annotations.items() if k.startswith(SNAPSHOT_LABEL_PREFIX)
            }
            labels[LABEL_TARGET] = chain
            labels[LABEL_KETCH_REF] = pinned
            _prepare_remote(api, snapshotter, chain, parent, labels, f"{name} layer {layer.digest}")
            parent = chain
        # Last: an image record is only ever created over snapshots that all exist.
        _put_image(api, name, descriptor.media_type, descriptor.digest, descriptor.size)
    return PullResult(
        name, descriptor.digest, chains, snapshotter, round(time.monotonic() - started, 3)
    )


def _expiry() -> str:
    """A day from now (RFC 3339): an interrupted pull's lease expires on its own."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))


def _failed(what: str, exc: grpc.RpcError) -> StorageError:
    code = exc.code()
    details = exc.details()
    return StorageError(f"{what}: containerd: {code.name}: {details}")


def _write_content(api: ContainerdAPI, data: bytes, digest: str, labels: dict[str, str]) -> None:
    """``data`` committed as ``digest`` with ``labels``; labels updated if already there."""
    ref = f"ketch-{digest}"

    def requests() -> Iterator[content_pb2.WriteContentRequest]:
        yield content_pb2.WriteContentRequest(
            action=content_pb2.WRITE,
            ref=ref,
            total=len(data),
            expected=digest,
            offset=0,
            data=data,
        )
        yield content_pb2.WriteContentRequest(
            action=content_pb2.COMMIT,
            ref=ref,
            total=len(data),
            expected=digest,
            offset=len(data),
            labels=labels,
        )

    call = api.channel.stream_stream(
        f"/{CONTENT}/Write",
        request_serializer=content_pb2.WriteContentRequest.SerializeToString,
        response_deserializer=content_pb2.WriteContentResponse.FromString,
    )
    try:
        for _ in call(requests(), timeout=api.timeout, metadata=api.metadata()):
            pass
        return
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise _failed(f"content {digest}", exc) from None
    try:
        api.unary(
            CONTENT,
            "Update",
            content_pb2.UpdateRequest(
                info=content_pb2.Info(digest=digest, labels=labels),
                update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
            ),
            content_pb2.UpdateResponse,
        )
    except grpc.RpcError as exc:
        raise _failed(f"content {digest}", exc) from None


def _put_image(api: ContainerdAPI, name: str, media_type: str, digest: str, size: int) -> None:
    image = images_pb2.Image(
        name=name, target=descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size)
    )
    try:
        api.unary(
            IMAGES,
            "Create",
            images_pb2.CreateImageRequest(image=image),
            images_pb2.CreateImageResponse,
        )
        return
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise _failed(f"image {name}", exc) from None
    try:
        api.unary(
            IMAGES,
            "Update",
            images_pb2.UpdateImageRequest(
                image=image, update_mask=field_mask_pb2.FieldMask(paths=["target"])
            ),
            images_pb2.UpdateImageResponse,
        )
    except grpc.RpcError as exc:
        raise _failed(f"image {name}", exc) from None


def _prepare_remote(
    api: ContainerdAPI,
    snapshotter: str,
    chain: str,
    parent: str,
    labels: dict[str, str],
    what: str,
) -> None:
    """Prepare the layer's snapshot; the snapshotter must answer ALREADY_EXISTS (remote)."""
    key = f"extract-{uuid.uuid4().hex} {chain}"
    try:
        api.unary(
            SNAPSHOTS,
            "Prepare",
            snapshots_pb2.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=key, parent=parent, labels=labels
            ),
            snapshots_pb2.PrepareSnapshotResponse,
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
            return  # the remote snapshot exists now, under ``chain``
        raise _failed(what, exc) from None
    # The snapshotter made an ordinary empty snapshot: it does not know Ketch layers.
    with contextlib.suppress(grpc.RpcError):
        api.unary(
            SNAPSHOTS,
            "Remove",
            snapshots_pb2.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
            empty_pb2.Empty,
        )
    raise UnsupportedError(
        f"{what}: snapshotter {snapshotter!r} does not make remote Ketch snapshots"
    )
