"""The backends the ImageStore contract suite runs against (house rule 5).

Each backend is a factory ``(tmp_path, request) -> (store, corrupt)``:

- ``store``: a new, empty, writable ``ImageStore`` of that backend, distinct for each
  distinct ``tmp_path`` (a test asks for two with two directories, e.g. to copy between
  them). Real components only: the S3 backend talks to a moto server on loopback.
- ``corrupt(digest, data)``: replaces the stored bytes of blob ``digest`` with ``data``
  behind the store's back (the way bit rot or a hostile mirror would), so the suite can
  check that reads verify what they return.

The ``backend`` fixture runs every contract test once per entry of ``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.storage.oci_layout_store import OciLayoutStore
from ketch.storage.s3_store import MIN_PART_SIZE, S3Store
from ketch.storage.store import ImageStore
from tests.fixtures.s3 import s3_bucket_fixture, s3_client, s3_endpoint_fixture, s3_store_client  # noqa: F401 (fixtures)

CorruptHook = Callable[[str, bytes], None]
"""``corrupt(digest, data)``: store ``data`` as the bytes of blob ``digest``."""

BackendFactory = Callable[[Path, pytest.FixtureRequest], tuple[ImageStore, CorruptHook]]


def oci_layout_backend(
    tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[ImageStore, CorruptHook]:
    store = OciLayoutStore.create(tmp_path / "layout")

    def corrupt(digest: str, data: bytes) -> None:
        store.layout.blob_path(digest).write_bytes(data)

    return store, corrupt


def s3_backend(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[ImageStore, CorruptHook]:
    # One bucket per test; one prefix per store of that test, named after its directory.
    endpoint: str = request.getfixturevalue("s3_endpoint")
    bucket: str = request.getfixturevalue("s3_bucket")
    prefix = f"images/{tmp_path.name}"
    # The smallest part size S3 allows, so that the suite's larger blobs go up multipart.
    store = S3Store.open(
        bucket, prefix, create=True, endpoint_url=endpoint, part_size=MIN_PART_SIZE
    )
    client = s3_client(endpoint)

    def corrupt(digest: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/blobs/sha256/{digest[7:]}", Body=data)

    return store, corrupt


BACKENDS: dict[str, BackendFactory] = {
    "oci-layout": oci_layout_backend,
    "s3": s3_backend,
    # Add a backend with one more entry here. The registry one, for instance
    # (ketch.storage.registry_store.RegistryStore, fixtures in tests/fixtures/registry.py):
    #   1. import its fixtures at the top, as the S3 ones are imported;
    #   2. write `registry_backend(tmp_path, request)`: get the registry through
    #      `request.getfixturevalue(...)`, return a RegistryStore on a repository named
    #      after `tmp_path.name`, and a corrupt hook that rewrites the blob's bytes in the
    #      registry's own storage directory (the registry must not re-verify them);
    #   3. add `"registry": registry_backend,` to this dict.
}


@dataclass(slots=True)
class Backend:
    """One backend, for one test: ``new(name)`` makes a store in ``tmp_path/name``."""

    name: str
    factory: BackendFactory
    tmp_path: Path
    request: pytest.FixtureRequest

    def new(self, name: str) -> tuple[ImageStore, CorruptHook]:
        directory = self.tmp_path / name
        directory.mkdir()
        return self.factory(directory, self.request)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    name: str = request.param
    return Backend(name, BACKENDS[name], tmp_path, request)


@pytest.fixture
def store_and_corrupt(backend: Backend) -> tuple[ImageStore, CorruptHook]:
    return backend.new("store")


@pytest.fixture
def store(store_and_corrupt: tuple[ImageStore, CorruptHook]) -> ImageStore:
    return store_and_corrupt[0]


@pytest.fixture
def corrupt(store_and_corrupt: tuple[ImageStore, CorruptHook]) -> CorruptHook:
    return store_and_corrupt[1]
