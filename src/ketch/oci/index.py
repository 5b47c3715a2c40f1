"""Image indexes and tags: choosing a platform, finding a tag, walking to a manifest,
and the ``index.json`` of an OCI layout with one tag moved. Shared by every store that
keeps an OCI layout (a local directory, an S3 prefix) and by the registry client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ketch.errors import IntegrityError, NotFoundError, UnsupportedError
from ketch.oci import mediatypes as mt
from ketch.oci.manifest import Descriptor, Manifest, Platform, media_type_of, parse_index

MAX_INDEX_DEPTH = 4  # an index may name an index; stop at a sane depth


def _platform_name(value: dict[str, Any]) -> str:
    return "/".join(str(value[k]) for k in ("os", "architecture", "variant") if value.get(k))


def choose_platform(entries: list[Descriptor], platform: Platform | None, where: str) -> Descriptor:
    """The entry of an index for ``platform`` (linux/amd64 when None)."""
    wanted = platform or Platform()
    for entry in entries:
        if entry.platform and wanted.matches(entry.platform):
            return entry
    found = ", ".join(_platform_name(d.platform) for d in entries if d.platform)
    want = "/".join(v for v in (wanted.os, wanted.architecture, wanted.variant) if v)
    raise NotFoundError(f"{where}: no manifest for platform {want} (found: {found or 'none'})")


def tag_names(descriptors: list[Descriptor]) -> list[str]:
    return [
        d.annotations[mt.ANNOTATION_REF_NAME]
        for d in descriptors
        if mt.ANNOTATION_REF_NAME in d.annotations
    ]


def find_tag(descriptors: list[Descriptor], tag: str, where: str) -> Descriptor:
    """The descriptor an OCI layout's index names ``tag`` (the last, if several)."""
    matches = [d for d in descriptors if d.annotations.get(mt.ANNOTATION_REF_NAME) == tag]
    if not matches:
        names = ", ".join(tag_names(descriptors)) or "none"
        raise NotFoundError(f"{where}:{tag}: no such tag (tags: {names})")
    return matches[-1]


def follow_to_manifest(
    read: Callable[[str], bytes], descriptor: Descriptor, platform: Platform | None, where: str
) -> tuple[Descriptor, Manifest, bytes]:
    """From a tagged descriptor through any indexes to the image manifest for
    ``platform``; ``read`` returns a blob's bytes, checked against its digest."""
    for _ in range(MAX_INDEX_DEPTH):
        data = read(descriptor.digest)
        kind = descriptor.media_type or media_type_of(data, descriptor.digest)
        if kind in mt.INDEX_TYPES:
            descriptor = choose_platform(parse_index(data, f"{where} index"), platform, where)
            continue
        return descriptor, Manifest.parse(data, f"{where} manifest", kind), data
    raise UnsupportedError(f"{where}: image indexes nested too deep")


def index_with_tag(doc: dict[str, Any], tag: str, descriptor: Descriptor) -> bytes:
    """An OCI layout's ``index.json`` with ``tag`` pointing at ``descriptor`` (any other
    entry of that tag dropped, every other entry kept)."""
    existing = doc.get("manifests", [])
    if not isinstance(existing, list):
        raise IntegrityError(
            f"index.json: manifests: expected a list, found {type(existing).__name__}"
        )
    manifests = [m for m in existing if _ref_name(m) != tag]
    annotations = dict(descriptor.annotations)
    annotations[mt.ANNOTATION_REF_NAME] = tag
    entry = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, annotations)
    manifests.append(entry.to_json())
    return empty_index(manifests)


def _ref_name(entry: Any) -> Any:
    """The tag an entry of an index names, if it is an object with annotations."""
    annotations = entry.get("annotations") if isinstance(entry, dict) else None
    return annotations.get(mt.ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None


def empty_index(manifests: list[Any] | None = None) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests or []}
    return json.dumps(doc, indent=2).encode() + b"\n"
