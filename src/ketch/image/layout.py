"""The Ketch image layout over OCI (docs/format.md §6), read and written here only.

A Ketch image is an OCI manifest whose layers are the data blobs, then one bootstrap,
each with its media type and annotations, and whose config is the source image's
config with ``rootfs`` naming those layers. containerd copies the layers'
``containerd.io/snapshot/`` annotations into its snapshot labels (docs/containerd.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ketch.errors import NotFoundError
from ketch.format.digests import sha256_hex
from ketch.format.records import FORMAT_VERSION, BlobRecord
from ketch.oci import mediatypes as mt
from ketch.oci.manifest import Descriptor, Manifest, canonical_json
from ketch.storage.store import ImageStore

KETCH_BLOB = "application/vnd.ketch.blob.v1"
KETCH_BOOTSTRAP = "application/vnd.ketch.bootstrap.v1"

ANNOTATION_KETCH_BOOTSTRAP = "dev.ketch.bootstrap"  # "true" on the bootstrap layer
ANNOTATION_KETCH_ROOT = "dev.ketch.root-digest"  # "<algo>:<hex>" of the tree root
ANNOTATION_KETCH_SOURCE = "dev.ketch.source-manifest"  # digest of the converted manifest
ANNOTATION_KETCH_VERSION = "dev.ketch.format-version"
ANNOTATION_KETCH_CHUNKS = "dev.ketch.blob.chunks"  # chunk count of a data blob
# containerd copies layer annotations prefixed "containerd.io/snapshot/" into the labels of
# the layer's snapshot Prepare: what the Ketch snapshotter needs.
ANNOTATION_SNAPSHOT_KETCH_LAYER = "containerd.io/snapshot/ketch.layer"  # "blob" or "bootstrap"
ANNOTATION_SNAPSHOT_KETCH_BOOTSTRAP = "containerd.io/snapshot/ketch.bootstrap"  # its digest

# -- read ---------------------------------------------------------------------------------


def bootstrap_layer(manifest: Manifest, where: str) -> Descriptor:
    """The manifest's one bootstrap layer; NotFoundError naming ``where`` if it is not a
    Ketch image."""
    layers = [layer for layer in manifest.layers if layer.media_type == KETCH_BOOTSTRAP]
    if len(layers) != 1:
        raise NotFoundError(
            f"{where}: not a Ketch image: expected one {KETCH_BOOTSTRAP} layer, found {len(layers)}"
        )
    return layers[0]


def source_manifest(manifest: Manifest) -> str | None:
    """The digest of the OCI manifest this image was converted from, if it says."""
    return manifest.annotations.get(ANNOTATION_KETCH_SOURCE)


# -- write --------------------------------------------------------------------------------


def directory_config(
    cmd: Sequence[str] = (), env: Sequence[str] = (), workdir: str | None = None
) -> dict[str, Any]:
    """The config of an image built from a directory: how its container starts."""
    run: dict[str, Any] = {}
    if cmd:
        run["Cmd"] = list(cmd)
    if env:
        run["Env"] = list(env)
    if workdir:
        run["WorkingDir"] = workdir
    return {"architecture": "amd64", "os": "linux", "config": run}


def image_config(source: Mapping[str, Any] | None, layer_digests: Sequence[str]) -> dict[str, Any]:
    """The source image's config with rootfs naming our layers; its history is per source
    layer, so it is dropped rather than left describing layers that are not there."""
    config: dict[str, Any] = json.loads(json.dumps(source)) if source else {}
    config.setdefault("architecture", "amd64")
    config.setdefault("os", "linux")
    config.setdefault("config", {})
    config.pop("history", None)
    config["rootfs"] = {"type": "layers", "diff_ids": list(layer_digests)}
    return config


def image_layers(
    blobs: Sequence[BlobRecord], bootstrap_digest: str, bootstrap_size: int, root_digest: str
) -> list[Descriptor]:
    """The manifest's layers: every data blob in blob-table order, then the bootstrap."""
    layers = [
        Descriptor(
            KETCH_BLOB,
            blob.oci_digest,
            blob.size,
            {
                ANNOTATION_KETCH_CHUNKS: str(blob.chunk_count),
                ANNOTATION_SNAPSHOT_KETCH_LAYER: "blob",
            },
        )
        for blob in blobs
    ]
    layers.append(
        Descriptor(
            KETCH_BOOTSTRAP,
            bootstrap_digest,
            bootstrap_size,
            {
                ANNOTATION_KETCH_BOOTSTRAP: "true",
                ANNOTATION_KETCH_ROOT: root_digest,
                ANNOTATION_KETCH_VERSION: str(FORMAT_VERSION),
                ANNOTATION_SNAPSHOT_KETCH_LAYER: "bootstrap",
                ANNOTATION_SNAPSHOT_KETCH_BOOTSTRAP: bootstrap_digest,
            },
        )
    )
    return layers


def write_manifest(
    dest: ImageStore,
    tag: str,
    layers: list[Descriptor],
    root_digest: str,
    *,
    config: Mapping[str, Any] | None,
    source: Descriptor | None,
) -> Descriptor:
    """Push the config, then put the manifest and move ``tag`` to it (last, so a failure
    before leaves the tag as it was); the layers' blobs must be pushed already.

    ``source`` is the OCI manifest a conversion read: named by an annotation and as the
    manifest's ``subject``, so a registry lists the Ketch image among its referrers.
    """
    config_bytes = canonical_json(image_config(config, [layer.digest for layer in layers]))
    config_digest = sha256_hex(config_bytes)
    dest.push_blob_bytes(config_bytes, config_digest)
    annotations = {ANNOTATION_KETCH_ROOT: root_digest}
    if source is not None:
        annotations[ANNOTATION_KETCH_SOURCE] = source.digest
    manifest = Manifest(
        mt.OCI_MANIFEST,
        Descriptor(mt.OCI_CONFIG, config_digest, len(config_bytes)),
        layers,
        annotations,
        source,
    )
    return dest.put_manifest(manifest.to_bytes(), mt.OCI_MANIFEST, tag)
