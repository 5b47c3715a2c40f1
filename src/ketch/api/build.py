"""``convert`` and ``build``: make a Ketch image from an OCI image or a directory, in any
store (``docker://``, ``oci:``, ``s3://``).

Chunk dictionaries are given as image references and opened with the destination's
store options, so a caller never handles the builder's own image objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ketch.builder.image_builder import BuildOptions, BuildSummary, ImageBuilder
from ketch.builder.progress import Progress
from ketch.config import StoreOptions
from ketch.format.prefetch_list import read_prefetch_list
from ketch.image.ketch_image import KetchImage, open_ketch_image
from ketch.storage.open import open_store

__all__ = ["Progress", "build", "convert", "read_prefetch_list"]


def convert(
    source: str,
    dest: str,
    options: BuildOptions | None = None,
    *,
    source_store: StoreOptions | None = None,
    dest_store: StoreOptions | None = None,
    chunk_dicts: Sequence[str] = (),
    progress: Progress | None = None,
) -> BuildSummary:
    """Convert the OCI image ``source`` names into the Ketch image ``dest`` names (a
    missing OCI layout or bucket prefix is created), reusing the chunks of the Ketch
    images ``chunk_dicts`` names. The tag moves last: an interrupted convert leaves the
    destination's tags as they were."""
    options = _with_dicts(options, chunk_dicts, dest_store)  # before anything is created
    source_image, source_tag = open_store(source, source_store)
    dest_image, dest_tag = open_store(dest, dest_store, create=True)
    builder = ImageBuilder(dest_image, options, progress)
    builder.convert(source_image, source_tag)
    return builder.finish(dest_tag)


def build(
    rootfs: str | Path,
    dest: str,
    options: BuildOptions | None = None,
    *,
    cmd: Sequence[str] = (),
    env: Sequence[str] = (),
    workdir: str | None = None,
    dest_store: StoreOptions | None = None,
    chunk_dicts: Sequence[str] = (),
    progress: Progress | None = None,
) -> BuildSummary:
    """Build the Ketch image ``dest`` names from the directory ``rootfs`` as one layer;
    ``cmd``, ``env`` (``KEY=VALUE``) and ``workdir`` go into its config."""
    options = _with_dicts(options, chunk_dicts, dest_store)  # before anything is created
    dest_image, dest_tag = open_store(dest, dest_store, create=True)
    builder = ImageBuilder(dest_image, options, progress)
    builder.add_directory(Path(rootfs), cmd=cmd, env=env, workdir=workdir)
    return builder.finish(dest_tag)


def _with_dicts(
    options: BuildOptions | None, references: Sequence[str], store: StoreOptions | None
) -> BuildOptions:
    options = options or BuildOptions()
    if not references:
        return options
    return replace(options, chunk_dicts=[*options.chunk_dicts, *_open_all(references, store)])


def _open_all(references: Sequence[str], store: StoreOptions | None) -> list[KetchImage]:
    images = []
    for reference in references:
        image_store, tag = open_store(reference, store)
        images.append(open_ketch_image(image_store, tag))
    return images
