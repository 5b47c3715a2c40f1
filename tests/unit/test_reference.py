"""Image references as skopeo spells them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.errors import UsageError
from ketch.oci.reference import (
    OciLayoutReference,
    RegistryReference,
    S3Reference,
    canonical_registry,
    parse_reference,
    registry_api_host,
)


@pytest.mark.parametrize(
    ("text", "path", "tag"),
    [
        ("oci:/srv/images:py2", "/srv/images", "py2"),
        ("oci:/srv/images", "/srv/images", "latest"),
        ("oci:relative/dir:v1.2", "relative/dir", "v1.2"),
        ("oci:/a:b/c", "/a:b/c", "latest"),  # a colon followed by a path is part of the path
    ],
)
def test_oci_layout_references(text: str, path: str, tag: str) -> None:
    assert parse_reference(text) == OciLayoutReference(Path(path), tag)


def test_registry_references() -> None:
    assert parse_reference("docker://localhost:5000/corpus:py1") == RegistryReference(
        "localhost:5000", "corpus", "py1", None
    )
    assert parse_reference("docker://reg.example/team/app") == RegistryReference(
        "reg.example", "team/app", "latest", None
    )
    digest = "sha256:" + "a" * 64
    assert parse_reference(f"docker://reg/app@{digest}") == RegistryReference(
        "reg", "app", None, digest
    )


def test_s3_references() -> None:
    assert parse_reference("s3://bucket/images/py1:v2") == S3Reference("bucket", "images/py1", "v2")
    assert parse_reference("s3://bucket/images") == S3Reference("bucket", "images", "latest")


@pytest.mark.parametrize(
    "text",
    [
        "py1",
        "oci:",
        "oci:/x:bad tag",
        "docker://noslash",
        "docker://reg/UPPER:t",
        "docker://reg/a@sha256:12",
        "s3://",
    ],
)
def test_malformed_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_reference(text)


@pytest.mark.parametrize(
    "hub", ["docker.io", "index.docker.io", "registry-1.docker.io", "Docker.IO"]
)
def test_docker_hub_names_are_one_registry(hub: str) -> None:
    """Every name of Docker Hub compares as docker.io, answers on registry-1.docker.io,
    and keeps its official images under library/."""
    assert canonical_registry(hub) == "docker.io"
    assert registry_api_host(hub) == "registry-1.docker.io"
    official = parse_reference(f"docker://{hub}/alpine:3")
    assert isinstance(official, RegistryReference)
    assert official.api_repository == "library/alpine"
    user = parse_reference(f"docker://{hub}/someone/alpine:3")
    assert isinstance(user, RegistryReference)
    assert user.api_repository == "someone/alpine"


def test_other_registries_keep_their_names() -> None:
    assert canonical_registry("Quay.io") == "quay.io"
    assert registry_api_host("localhost:5000") == "localhost:5000"
    ref = parse_reference("docker://localhost:5000/alpine:3")
    assert isinstance(ref, RegistryReference)
    assert ref.api_repository == "alpine"
