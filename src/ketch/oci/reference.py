"""Image references with transports, as skopeo spells them.

oci:DIR[:TAG]                      an OCI image layout on disk (tag "latest" if omitted)
docker://HOST[:PORT]/REPO[:TAG|@DIGEST]   a registry (the registry issue)
s3://BUCKET/PREFIX[:TAG]           an OCI layout in object storage (the S3 issue)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import UsageError

DEFAULT_TAG = "latest"
#: Docker Hub's names: the one references use, the legacy one (and ``docker login``'s
#: config.json key), and the host its API answers on
DOCKER_HUB = "docker.io"
_DOCKER_HUB_NAMES = frozenset({DOCKER_HUB, "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_API = "registry-1.docker.io"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class OciLayoutReference:
    path: Path
    tag: str

    def __str__(self) -> str:
        return f"oci:{self.path}:{self.tag}"


@dataclass(frozen=True, slots=True)
class RegistryReference:
    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"docker://{self.registry}/{self.repository}{suffix}"

    @property
    def api_repository(self) -> str:
        """The repository as the registry's API names it: Docker Hub's official images
        live under ``library/``, as Docker names them."""
        if is_docker_hub(self.registry) and "/" not in self.repository:
            return f"library/{self.repository}"
        return self.repository


@dataclass(frozen=True, slots=True)
class S3Reference:
    bucket: str
    prefix: str
    tag: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}:{self.tag}"


ImageReference = OciLayoutReference | RegistryReference | S3Reference


def is_docker_hub(registry: str) -> bool:
    """Whether a registry name (``host[:port]``, any case) is one of Docker Hub's."""
    return registry.lower() in _DOCKER_HUB_NAMES


def canonical_registry(registry: str) -> str:
    """How two registry names compare: lower case, Docker Hub's names as ``docker.io``."""
    return DOCKER_HUB if is_docker_hub(registry) else registry.lower()


def registry_api_host(registry: str) -> str:
    """The host that answers a registry's API: Docker Hub's is not ``docker.io``."""
    return _DOCKER_HUB_API if is_docker_hub(registry) else registry


def parse_reference(text: str) -> ImageReference:
    if text.startswith("oci:"):
        return _parse_oci(text[4:], text)
    if text.startswith("docker://"):
        return _parse_docker(text[len("docker://") :], text)
    if text.startswith("s3://"):
        return _parse_s3(text[len("s3://") :], text)
    raise UsageError(
        f"image reference {text!r}: expected oci:DIR[:TAG], docker://HOST/REPO[:TAG] or "
        "s3://BUCKET/PREFIX[:TAG]"
    )


def _split_tag(rest: str) -> tuple[str, str]:
    """Split ``PATH:TAG`` at the last colon whose right side is a tag, not a path."""
    head, sep, tail = rest.rpartition(":")
    if sep and head and "/" not in tail:
        return head, tail
    return rest, DEFAULT_TAG


def _check_tag(tag: str, text: str) -> str:
    if not _TAG.match(tag):
        raise UsageError(f"image reference {text!r}: tag {tag!r} is not a valid OCI tag")
    return tag


def _parse_oci(rest: str, text: str) -> OciLayoutReference:
    path, tag = _split_tag(rest)
    if not path:
        raise UsageError(f"image reference {text!r}: expected oci:DIR[:TAG]")
    return OciLayoutReference(Path(path), _check_tag(tag, text))


def _parse_docker(rest: str, text: str) -> RegistryReference:
    registry, sep, remainder = rest.partition("/")
    if not sep or not registry or not remainder:
        raise UsageError(f"image reference {text!r}: expected docker://HOST[:PORT]/REPO[:TAG]")
    digest = None
    tag: str | None = None
    if "@" in remainder:
        remainder, digest = remainder.split("@", 1)
        if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
            raise UsageError(f"image reference {text!r}: digest {digest!r} is not sha256:<hex>")
    else:
        remainder, tag = _split_tag(remainder)
        _check_tag(tag, text)
    if not re.match(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*$", remainder):
        raise UsageError(f"image reference {text!r}: repository {remainder!r} is not valid")
    return RegistryReference(registry, remainder, tag, digest)


def _parse_s3(rest: str, text: str) -> S3Reference:
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"image reference {text!r}: expected s3://BUCKET/PREFIX[:TAG]")
    prefix, tag = _split_tag(prefix) if prefix else ("", DEFAULT_TAG)
    return S3Reference(bucket, prefix.strip("/"), _check_tag(tag, text))
