"""``RegistryClient``: the parts of the registry API put together on one transport.

Safe to share between threads. Each part is a module of its own; this class only joins
them, so that a store holds one client with every request kind.
"""

from __future__ import annotations

from ketch.storage.registry.blobs import BlobAPI
from ketch.storage.registry.referrers import ReferrersAPI
from ketch.storage.registry.uploads import UploadAPI


class RegistryClient(ReferrersAPI, BlobAPI, UploadAPI):
    """One registry: manifests, tags and referrers; blob reads and uploads."""
