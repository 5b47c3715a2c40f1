"""``ketch containerd pull``'s own checks, before it talks to containerd or a registry."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ketch.config import StoreOptions
from ketch.errors import UsageError
from ketch.snapshot.containerd_api import ContainerdAPI
from ketch.snapshot.pull import chain_ids, pull


@pytest.mark.parametrize("ref", ["oci:/tmp/layout:tag", "s3://bucket/prefix:tag"])
def test_only_registry_references(ref: str, tmp_path: Path) -> None:
    with (
        ContainerdAPI(tmp_path / "none.sock") as api,
        pytest.raises(UsageError, match="containerd pulls from a registry"),
    ):
        pull(ref, StoreOptions(), api)


def test_chain_ids_follow_the_image_spec() -> None:
    a, b, c = ("sha256:" + hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []
