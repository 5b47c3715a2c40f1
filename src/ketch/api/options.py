"""Settings that depend on the image: the registry mirrors configured for its host.

``[[registry.mirrors]]`` entries name a registry (or ``*``); which apply to an image is
decided by the image reference's registry, spelled canonically (``docker.io`` and
``index.docker.io`` are one registry).
"""

from __future__ import annotations

from collections.abc import Iterable

from ketch.config import MirrorConfig
from ketch.errors import UsageError
from ketch.oci.reference import RegistryReference, canonical_registry, parse_reference


def mirrors_for(mirrors: Iterable[MirrorConfig], reference: str | None) -> list[str]:
    """The mirror URLs for the image ``reference`` names: those for ``*`` and those
    naming its registry; none for a reference that is not a registry's (or not valid:
    opening the image reports that)."""
    host = _registry_host(reference)
    if host is None:
        return []
    wanted = canonical_registry(host)
    return [
        m.url for m in mirrors if m.url and (m.host == "*" or canonical_registry(m.host) == wanted)
    ]


def _registry_host(reference: str | None) -> str | None:
    if reference is None:
        return None
    try:
        parsed = parse_reference(reference)
    except UsageError:
        return None
    return parsed.registry if isinstance(parsed, RegistryReference) else None
