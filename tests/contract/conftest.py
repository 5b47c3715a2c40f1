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

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.config import RegistryOptions
from ketch.storage.memory import MemoryStore
from ketch.storage.oci_layout_store import OciLayoutStore
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.mirrors import MirroredRegistryStore, mirror_client
from ketch.storage.registry.store import RegistryStore
from ketch.storage.s3_store import MIN_PART_SIZE, S3Store
from ketch.storage.store import ImageStore
from tests.fixtures.registry import (  # noqa: F401 (fixtures)
    RunningRegistry,
    _serve,
    registry_plain_fixture,
)
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


@pytest.fixture(scope="session", name="registry_for_mirrors")
def registry_for_mirrors_fixture(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningRegistry]:
    """A plain registry of the mirrored backend's own: a registry keeps one file per blob
    for all its repositories, so a blob the suite corrupts for one backend would be
    corrupt for the other."""
    yield from _serve("plain", tmp_path_factory)


def memory_backend(
    tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[ImageStore, CorruptHook]:
    store = MemoryStore(f"memory:{tmp_path.name}")
    return store, store.corrupt


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


def registry_backend(
    tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[ImageStore, CorruptHook]:
    # The session's plain docker-registry; one repository per store of each test, named
    # after the test's directory and the store's. Blobs are content-addressed across
    # repositories: a corrupted one stays corrupted for every repository holding the
    # same bytes, so the suite corrupts only bytes no other test pushes.
    return _registry_backend(tmp_path, request, mirrored=False)


def mirrored_backend(
    tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[ImageStore, CorruptHook]:
    # The origin's own registry as its mirror: blob reads go through the mirror path
    # (and its fallback to the origin), everything else to the origin.
    return _registry_backend(tmp_path, request, mirrored=True)


def _registry_backend(
    tmp_path: Path, request: pytest.FixtureRequest, *, mirrored: bool
) -> tuple[ImageStore, CorruptHook]:
    registry: RunningRegistry = request.getfixturevalue(
        "registry_for_mirrors" if mirrored else "registry_plain"
    )
    test_dir, store_dir = tmp_path.parent.name, tmp_path.name
    repository = "contract/" + "/".join(_repository_component(n) for n in (test_dir, store_dir))
    options = RegistryOptions(backoff=0.01)
    client = RegistryClient(registry.host, options)
    store: RegistryStore
    if mirrored:
        mirror = mirror_client(f"http://{registry.host}", options)
        store = MirroredRegistryStore(client, repository, [mirror])
    else:
        store = RegistryStore(client, repository)
    request.addfinalizer(store.close)
    blobs = registry.root / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"

    def corrupt(digest: str, data: bytes) -> None:
        # The registry serves the file as it is (it checks digests on upload only).
        hexdigest = digest.removeprefix("sha256:")
        (blobs / hexdigest[:2] / hexdigest / "data").write_bytes(data)

    return store, corrupt


def _repository_component(name: str) -> str:
    """A directory name as a repository path component: [a-z0-9]+ joined by . _ -."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return cleaned or "x"


BACKENDS: dict[str, BackendFactory] = {
    "memory": memory_backend,
    "mirrored-registry": mirrored_backend,
    "oci-layout": oci_layout_backend,
    "registry": registry_backend,
    "s3": s3_backend,
    # Add a backend with one more entry here: a factory `(tmp_path, request) -> (store,
    # corrupt)` getting its servers through `request.getfixturevalue(...)` (import their
    # fixtures at the top, as the S3 and registry ones are), whose corrupt hook rewrites
    # a blob's bytes behind the store's back.
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
