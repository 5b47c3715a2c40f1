"""Open the store an image reference names."""

from __future__ import annotations

from ketch.errors import UnsupportedError
from ketch.oci.reference import ImageReference, OciLayoutReference, parse_reference
from ketch.storage.oci_layout_store import OciLayoutStore
from ketch.storage.store import ImageStore


def open_store(reference: ImageReference | str, *, create: bool = False) -> tuple[ImageStore, str]:
    """The store and tag of a reference; ``create`` makes a missing destination."""
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if isinstance(ref, OciLayoutReference):
        store = OciLayoutStore.create(ref.path) if create else OciLayoutStore.open(ref.path)
        return store, ref.tag
    raise UnsupportedError(f"{ref}: this transport is not supported yet (only oci:DIR:TAG)")
