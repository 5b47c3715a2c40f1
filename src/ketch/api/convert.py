"""``convert``: an OCI image to a Ketch image, from any store to any store."""

from __future__ import annotations

from ketch.builder.image_builder import BuildOptions, BuildSummary, ImageBuilder
from ketch.builder.progress import Progress
from ketch.config import StoreOptions
from ketch.storage.open import open_store


def convert(
    source: str,
    dest: str,
    options: BuildOptions | None = None,
    *,
    source_store: StoreOptions | None = None,
    dest_store: StoreOptions | None = None,
    progress: Progress | None = None,
) -> BuildSummary:
    """Convert the OCI image ``source`` names into the Ketch image ``dest`` names
    (``docker://HOST/REPO:TAG``, ``oci:DIR:TAG``, ``s3://BUCKET/PREFIX:TAG``; a missing
    OCI layout or bucket prefix is created). The tag moves last: an interrupted convert
    leaves the destination's tags as they were."""
    source_image, source_tag = open_store(source, source_store)
    dest_image, dest_tag = open_store(dest, dest_store, create=True)
    builder = ImageBuilder(dest_image, options or BuildOptions(), progress)
    builder.convert(source_image, source_tag)
    return builder.finish(dest_tag)
