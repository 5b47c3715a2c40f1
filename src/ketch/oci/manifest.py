"""OCI descriptors, manifests and indexes: parse what others wrote, write our own.

Our JSON is written deterministically (fixed key order, no whitespace) so that the
same image always has the same manifest digest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import IntegrityError, UnsupportedError
from ketch.oci import mediatypes as mt

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_MANIFEST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise UnsupportedError(f"platform {text!r}: expected OS/ARCH[/VARIANT]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def matches(self, value: dict[str, Any]) -> bool:
        if value.get("os") != self.os or value.get("architecture") != self.architecture:
            return False
        return self.variant is None or value.get("variant") == self.variant


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.platform:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        return out

    @classmethod
    def from_json(cls, value: Any, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise IntegrityError(
                f"{where}: descriptor: expected an object, found {type(value).__name__}"
            )
        digest = value.get("digest")
        size = value.get("size")
        media_type = value.get("mediaType", "")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise IntegrityError(
                f"{where}: descriptor digest: expected sha256:<64 hex>, found {digest!r}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise IntegrityError(
                f"{where}: descriptor size: expected an integer >= 0, found {size!r}"
            )
        if not isinstance(media_type, str):
            raise IntegrityError(
                f"{where}: descriptor mediaType: expected a string, found {media_type!r}"
            )
        annotations = string_map(value.get("annotations"), f"{where}: descriptor annotations")
        platform = value.get("platform")
        return cls(
            media_type,
            digest,
            size,
            annotations,
            platform if isinstance(platform, dict) else None,
            value.get("artifactType") if isinstance(value.get("artifactType"), str) else None,
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        if self.artifact_type:
            doc["artifactType"] = self.artifact_type
        doc["config"] = self.config.to_json()
        doc["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject:
            doc["subject"] = self.subject.to_json()
        if self.annotations:
            doc["annotations"] = dict(sorted(self.annotations.items()))
        return canonical_json(doc)

    @classmethod
    def parse(cls, data: bytes, where: str, media_type: str | None = None) -> Manifest:
        doc = load_json(data, where)
        kind = doc.get("mediaType") or media_type or mt.OCI_MANIFEST
        if kind not in mt.MANIFEST_TYPES:
            raise UnsupportedError(
                f"{where}: manifest media type {kind!r} is not an image manifest"
            )
        if doc.get("schemaVersion") != 2:
            raise IntegrityError(
                f"{where}: schemaVersion: expected 2, found {doc.get('schemaVersion')!r}"
            )
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise IntegrityError(f"{where}: layers: expected a list, found {type(layers).__name__}")
        subject = doc.get("subject")
        return cls(
            kind,
            Descriptor.from_json(doc.get("config"), f"{where} config"),
            [Descriptor.from_json(layer, f"{where} layer {i}") for i, layer in enumerate(layers)],
            string_map(doc.get("annotations"), f"{where}: annotations"),
            Descriptor.from_json(subject, f"{where} subject") if subject else None,
            doc.get("artifactType") if isinstance(doc.get("artifactType"), str) else None,
        )


def parse_index(data: bytes, where: str) -> list[Descriptor]:
    doc = load_json(data, where)
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise IntegrityError(
            f"{where}: manifests: expected a list, found {type(manifests).__name__}"
        )
    return [Descriptor.from_json(m, f"{where} manifest {i}") for i, m in enumerate(manifests)]


def media_type_of(data: bytes, where: str) -> str:
    doc = load_json(data, where)
    kind = doc.get("mediaType")
    if isinstance(kind, str):
        return kind
    return mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST


def string_map(value: Any, where: str) -> dict[str, str]:
    """Annotations: a JSON object of strings (absent or null: none)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise IntegrityError(f"{where}: expected a string map, found {type(value).__name__}")
    return dict(value)


def load_json(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_SIZE:
        raise IntegrityError(f"{where}: size: expected <= {MAX_MANIFEST_SIZE}, found {len(data)}")
    try:
        doc = json.loads(data)
    except ValueError as exc:  # not UTF-8, not JSON, or a number of over 4300 digits
        raise IntegrityError(f"{where}: expected JSON, found invalid data ({exc})") from None
    except RecursionError:
        raise IntegrityError(
            f"{where}: expected JSON, found arrays or objects nested too deep"
        ) from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{where}: expected a JSON object, found {type(doc).__name__}")
    return doc


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
