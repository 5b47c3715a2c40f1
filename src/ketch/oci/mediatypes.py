"""Media types and annotation keys, as named constants (docs/format.md §6)."""

from __future__ import annotations

# OCI image spec.
OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

# Docker schema 2, as registries and skopeo still hand them out.
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

# Ketch.
KETCH_BLOB = "application/vnd.ketch.blob.v1"
KETCH_BOOTSTRAP = "application/vnd.ketch.bootstrap.v1"

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_KETCH_BOOTSTRAP = "dev.ketch.bootstrap"  # "true" on the bootstrap layer
ANNOTATION_KETCH_ROOT = "dev.ketch.root-digest"  # "<algo>:<hex>" of the tree root
ANNOTATION_KETCH_SOURCE = "dev.ketch.source-manifest"  # digest of the converted manifest
ANNOTATION_KETCH_VERSION = "dev.ketch.format-version"
ANNOTATION_KETCH_CHUNKS = "dev.ketch.blob.chunks"  # chunk count of a data blob
# containerd copies layer annotations prefixed "containerd.io/snapshot/" into the labels of
# the layer's snapshot Prepare: what the Ketch snapshotter needs (docs/containerd.md).
ANNOTATION_SNAPSHOT_KETCH_LAYER = "containerd.io/snapshot/ketch.layer"  # "blob" or "bootstrap"
ANNOTATION_SNAPSHOT_KETCH_BOOTSTRAP = "containerd.io/snapshot/ketch.bootstrap"  # its digest

# Tar layer compression by media type.
LAYER_COMPRESSION = {
    OCI_LAYER_TAR: "none",
    OCI_LAYER_NONDIST_TAR: "none",
    DOCKER_LAYER_TAR: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_NONDIST_GZIP: "gzip",
    DOCKER_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    OCI_LAYER_NONDIST_ZSTD: "zstd",
}
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
