"""Image references as skopeo spells them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.errors import UsageError
from ketch.oci.reference import OciLayoutReference, RegistryReference, S3Reference, parse_reference


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
