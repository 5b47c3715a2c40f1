"""Manifests, indexes and tags of a registry (distribution spec: manifests, tags).

Manifests and indexes (OCI and Docker schema 2) are read by tag or digest (``GET``,
``HEAD``) and checked against their digest, and written by tag (``PUT``); an index is
resolved to one image manifest by platform (linux/amd64 unless told). Tags are listed
page by page (``Link: <...>; rel="next"``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import httpx

from ketch.errors import IntegrityError, KetchError, NotFoundError, StorageError
from ketch.format.digests import sha256_hex
from ketch.oci import mediatypes as mt
from ketch.oci.index import choose_platform
from ketch.oci.manifest import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Manifest,
    Platform,
    media_type_of,
    parse_index,
)
from ketch.storage.registry.auth import pull_scope, push_scope
from ketch.storage.registry.transport import RegistryTransport, next_link

MANIFEST_ACCEPT = ", ".join(
    (mt.OCI_MANIFEST, mt.OCI_INDEX, mt.DOCKER_MANIFEST, mt.DOCKER_MANIFEST_LIST)
)


@dataclass(frozen=True, slots=True)
class PushedManifest:
    descriptor: Descriptor
    subject_indexed: bool  # the registry answered OCI-Subject: it keeps referrers itself


class ManifestAPI(RegistryTransport):
    """Manifest and tag requests."""

    def get_manifest(self, repository: str, reference: str) -> tuple[Descriptor, bytes]:
        """A manifest or index by tag or digest, checked against the digest."""
        what = f"{self.where(repository)}: manifest {reference}"
        self.ping()

        def attempt() -> tuple[httpx.Response, bytes]:
            response = self._request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                scope=pull_scope(repository),
                what=what,
                headers={"Accept": MANIFEST_ACCEPT},
                stream=True,
                retry=False,
            )
            with contextlib.closing(response):
                if response.status_code != 200:
                    raise self._fail(response, what, "HTTP 200")
                return response, self._read_capped(
                    response, MAX_MANIFEST_SIZE, what, transient=True
                )

        response, data = self._attempts(what, attempt)
        found = sha256_hex(data)
        expected = reference if reference.startswith("sha256:") else None
        expected = expected or response.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha256:") and expected != found:
            raise IntegrityError(f"{what}: digest: expected {expected}, found {found}")
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        if kind not in mt.MANIFEST_TYPES + mt.INDEX_TYPES:
            kind = media_type_of(data, what)
        return Descriptor(kind, found, len(data)), data

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        what = f"{self.where(repository)}: manifest {reference}"
        response = self._request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scope=pull_scope(repository),
            what=what,
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(response, what, "HTTP 200 or 404")
        digest = response.headers.get("Docker-Content-Digest", "")
        size = response.headers.get("Content-Length", "")
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        if not digest.startswith("sha256:") or not size.isdigit():
            raise StorageError(
                f"{what}: HEAD: expected Docker-Content-Digest and Content-Length, "
                f"found {digest or 'no digest'} and {size or 'no length'}"
            )
        return Descriptor(kind, digest, int(size))

    def resolve(
        self, repository: str, reference: str, platform: Platform | None = None
    ) -> tuple[Descriptor, Manifest, bytes]:
        """The image manifest ``reference`` names, choosing ``platform`` from an index."""
        where = f"{self.where(repository)}:{reference}"
        try:
            descriptor, data = self.get_manifest(repository, reference)
        except NotFoundError:
            if reference.startswith("sha256:"):
                raise
            raise NotFoundError(f"{where}: no such tag ({self._tags_hint(repository)})") from None
        for _ in range(4):  # an index may name an index; stop at a sane depth
            kind = descriptor.media_type or media_type_of(data, where)
            if kind not in mt.INDEX_TYPES:
                return descriptor, Manifest.parse(data, f"{where} manifest", kind), data
            chosen = choose_platform(parse_index(data, f"{where} index"), platform, where)
            child, data = self.get_manifest(repository, chosen.digest)
            if child.size != chosen.size:
                raise IntegrityError(
                    f"{where}: manifest {chosen.digest}: size: expected {chosen.size}, "
                    f"found {child.size}"
                )
            descriptor = Descriptor(
                chosen.media_type or child.media_type,
                child.digest,
                child.size,
                platform=chosen.platform,
            )
        raise StorageError(f"{where}: image indexes nested too deep")

    def put_manifest(
        self, repository: str, reference: str, data: bytes, media_type: str
    ) -> PushedManifest:
        digest = sha256_hex(data)
        what = f"{self.where(repository)}: pushing manifest {digest} as {reference}"
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=push_scope(repository),
            what=what,
            headers={"Content-Type": media_type},
            body=data,
        )
        if response.status_code not in (200, 201):
            raise self._fail(response, what, "HTTP 201")
        found = response.headers.get("Docker-Content-Digest")
        if found and found != digest:
            raise IntegrityError(f"{what}: registry digest: expected {digest}, found {found}")
        return PushedManifest(
            Descriptor(media_type, digest, len(data)), "OCI-Subject" in response.headers
        )

    def _tags_hint(self, repository: str) -> str:
        """``tags: a, b`` for a message (referrers fallback tags left out), best effort."""
        try:
            tags = [t for t in self.tags(repository) if not t.startswith("sha256-")]
        except KetchError:
            return "tags: unknown"
        return f"tags: {', '.join(tags) or 'none'}"

    def tags(self, repository: str) -> list[str]:
        """The repository's tags (``GET /v2/<name>/tags/list``, every page); none if the
        repository does not exist."""
        what = f"{self.where(repository)}: tags"
        url = self._url(f"/v2/{repository}/tags/list")
        found: list[str] = []
        for _ in range(1000):  # pages
            response = self._request("GET", url, scope=pull_scope(repository), what=what)
            if response.status_code == 404:
                return found
            if response.status_code != 200:
                raise self._fail(response, what, "HTTP 200")
            try:
                doc = json.loads(response.content)
            except (ValueError, RecursionError):  # not JSON, a 4300-digit number, too deep
                raise StorageError(f"{what}: expected JSON, found invalid data") from None
            tags = doc.get("tags") if isinstance(doc, dict) else None
            found.extend(t for t in tags or [] if isinstance(t, str))
            next_url = next_link(response.headers.get("Link"))
            if next_url is None:
                break
            url = url.join(next_url)
        return found
