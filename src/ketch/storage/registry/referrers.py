"""The referrers of a manifest (distribution spec: "Listing Referrers").

``GET /v2/<name>/referrers/<digest>`` lists the manifests whose ``subject`` is a digest;
where a registry lacks it (404), the fallback tag schema stands in: an index tagged
``sha256-<hex>`` of the subject, which a client pushing a manifest with a subject
updates itself ("Pushing Manifests with Subject").
"""

from __future__ import annotations

from ketch.errors import NotFoundError
from ketch.oci import mediatypes as mt
from ketch.oci.manifest import Descriptor, canonical_json, parse_index
from ketch.storage.registry.auth import pull_scope
from ketch.storage.registry.manifests import ManifestAPI
from ketch.storage.registry.transport import next_link


class ReferrersAPI(ManifestAPI):
    """Referrer listing, and the fallback tag index for registries without the API."""

    def referrers(
        self, repository: str, digest: str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Manifests whose ``subject`` is ``digest``: the referrers API, else the
        fallback tag ``sha256-<hex>`` (an index), else none."""
        what = f"{self.where(repository)}: referrers of {digest}"
        url = self._url(f"/v2/{repository}/referrers/{digest}")
        if artifact_type:
            url = url.copy_merge_params({"artifactType": artifact_type})
        found: list[Descriptor] = []
        for _ in range(100):  # pages
            response = self._request(
                "GET",
                url,
                scope=pull_scope(repository),
                what=what,
                headers={"Accept": mt.OCI_INDEX},
            )
            if response.status_code == 404 and not found:
                found = self._fallback_referrers(repository, digest)
                break
            if response.status_code != 200:
                raise self._fail(response, what, "HTTP 200")
            found.extend(parse_index(response.content, what))
            next_url = next_link(response.headers.get("Link"))
            if next_url is None:
                break
            url = url.join(next_url)
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    def _fallback_referrers(self, repository: str, digest: str) -> list[Descriptor]:
        try:
            _, data = self.get_manifest(repository, fallback_tag(digest))
        except NotFoundError:
            return []
        return parse_index(data, f"{self.where(repository)}:{fallback_tag(digest)}")

    def add_referrer_fallback(self, repository: str, subject: str, referrer: Descriptor) -> None:
        """Add ``referrer`` to the fallback tag index of ``subject`` (distribution spec,
        "Pushing Manifests with Subject", for registries without the referrers API)."""
        tag = fallback_tag(subject)
        try:
            _, data = self.get_manifest(repository, tag)
            entries = parse_index(data, f"{self.where(repository)}:{tag}")
        except NotFoundError:
            entries = []
        if any(d.digest == referrer.digest for d in entries):
            return
        entries.append(referrer)
        doc = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_INDEX,
            "manifests": [d.to_json() for d in entries],
        }
        self.put_manifest(repository, tag, canonical_json(doc), mt.OCI_INDEX)


def fallback_tag(digest: str) -> str:
    """The referrers fallback tag of a digest: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"[:128]
