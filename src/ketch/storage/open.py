"""Open the store an image reference names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ketch.config import RegistryConfig, bounds_of
from ketch.errors import UnsupportedError, UsageError
from ketch.oci.reference import (
    ImageReference,
    OciLayoutReference,
    RegistryReference,
    S3Reference,
    parse_reference,
)

if TYPE_CHECKING:
    from ketch.storage.store import ImageStore

_DEFAULTS = RegistryConfig()  # the one home of every default: ketch.config
DEFAULT_CONNECT_TIMEOUT = _DEFAULTS.connect_timeout
DEFAULT_READ_TIMEOUT = _DEFAULTS.timeout
DEFAULT_RETRIES = _DEFAULTS.retries
DEFAULT_HEALTH_CHECK_INTERVAL = _DEFAULTS.health_check_interval
# StoreOptions' numbers, checked again when they arrive as JSON (from the node service's
# clients): the setting each one comes from.
_NUMBER_SETTINGS = {
    "connect_timeout": "connect_timeout",
    "read_timeout": "timeout",
    "retries": "retries",
    "health_check_interval": "health_check_interval",
}


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How to reach a store, as the command line and the configuration say."""

    creds: str | None = None
    tls_verify: bool = True
    ca_file: Path | None = None
    docker_config: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    retries: int = DEFAULT_RETRIES
    endpoint_url: str | None = None
    region: str | None = None  # S3 region; None: boto3's own choice
    proxy: str | None = None  # HTTP proxy for registry traffic (origin and mirrors)
    mirrors: tuple[str, ...] = ()  # registry mirror URLs for blob reads, tried in order
    health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL  # a failed mirror rests

    def to_json(self) -> dict[str, object]:
        """Plain JSON values, for a daemon started by the node service on our behalf."""
        return {
            "creds": self.creds,
            "tls_verify": self.tls_verify,
            "ca_file": None if self.ca_file is None else str(self.ca_file),
            "docker_config": None if self.docker_config is None else str(self.docker_config),
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retries": self.retries,
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "proxy": self.proxy,
            "mirrors": list(self.mirrors),
            "health_check_interval": self.health_check_interval,
        }

    @classmethod
    def from_json(cls, data: object) -> StoreOptions:
        """The inverse of ``to_json``; a malformed value is a ``UsageError``."""
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise UsageError("store options: expected an object with exactly the known keys")

        def text(key: str) -> str | None:
            value = data[key]
            if value is not None and not isinstance(value, str):
                raise UsageError(f"store options {key!r}: expected a string")
            return value

        def number(key: str) -> float:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"store options {key!r}: expected a number")
            bounds_of(RegistryConfig, _NUMBER_SETTINGS[key]).check(value, f"store options {key!r}")
            return float(value)

        mirrors = data["mirrors"]
        if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
            raise UsageError("store options 'mirrors': expected a list of strings")
        if not isinstance(data["tls_verify"], bool):
            raise UsageError("store options 'tls_verify': expected a boolean")
        ca_file, docker_config = text("ca_file"), text("docker_config")
        return cls(
            creds=text("creds"),
            tls_verify=data["tls_verify"],
            ca_file=None if ca_file is None else Path(ca_file),
            docker_config=None if docker_config is None else Path(docker_config),
            connect_timeout=number("connect_timeout"),
            read_timeout=number("read_timeout"),
            retries=int(number("retries")),
            endpoint_url=text("endpoint_url"),
            region=text("region"),
            proxy=text("proxy"),
            mirrors=tuple(mirrors),
            health_check_interval=number("health_check_interval"),
        )


def open_store_with(
    reference: ImageReference | str, options: StoreOptions, *, create: bool = False
) -> tuple[ImageStore, str]:
    return open_store(
        reference,
        create=create,
        creds=options.creds,
        tls_verify=options.tls_verify,
        ca_file=options.ca_file,
        docker_config=options.docker_config,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        retries=options.retries,
        endpoint_url=options.endpoint_url,
        region=options.region,
        proxy=options.proxy,
        mirrors=options.mirrors,
        health_check_interval=options.health_check_interval,
    )


def open_store(
    reference: ImageReference | str,
    *,
    create: bool = False,
    creds: str | None = None,
    tls_verify: bool = True,
    ca_file: Path | None = None,
    docker_config: Path | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    endpoint_url: str | None = None,
    region: str | None = None,
    proxy: str | None = None,
    mirrors: tuple[str, ...] = (),
    health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL,
) -> tuple[ImageStore, str]:
    """The store and tag of a reference; ``create`` makes a missing destination.

    For ``docker://HOST/REPO[:TAG|@DIGEST]`` the tag returned is the tag or the digest,
    and the keyword options say how to reach the registry (``RegistryOptions``):
    ``creds`` ``USER:PASSWORD`` (else the Docker config's entry for the host, from
    ``docker_config`` or ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``),
    ``tls_verify`` and ``ca_file`` (loopback hosts are plain HTTP whatever they say),
    timeouts in seconds, and how many times a failed request is retried; ``proxy`` an HTTP
    proxy URL for every request; ``mirrors`` registry mirror URLs that blob reads try
    first, each skipped for ``health_check_interval`` seconds after it fails
    (``MirroredRegistryStore``).

    For ``s3://BUCKET/PREFIX[:TAG]``, ``endpoint_url`` is the S3 endpoint (default
    ``$AWS_ENDPOINT_URL``, else AWS), ``region`` the region (else boto3's usual one, as
    for credentials).
    """
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if isinstance(ref, OciLayoutReference):
        # Imported here: `ketch run` and `ketch mount` with a node service build their
        # StoreOptions from this module but never open a store themselves.
        from ketch.storage.oci_layout_store import OciLayoutStore  # noqa: PLC0415

        store = OciLayoutStore.create(ref.path) if create else OciLayoutStore.open(ref.path)
        return store, ref.tag
    if isinstance(ref, RegistryReference):
        # Imported here: httpx is not needed for local layouts.
        from ketch.storage.registry.client import RegistryClient  # noqa: PLC0415
        from ketch.storage.registry.store import RegistryStore  # noqa: PLC0415
        from ketch.storage.registry.transport import RegistryOptions  # noqa: PLC0415

        options = RegistryOptions(
            creds=creds,
            docker_config=docker_config,
            tls_verify=tls_verify,
            ca_file=ca_file,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            proxy=proxy,
        )
        client = RegistryClient(ref.registry, options)
        repository = ref.api_repository
        tag = ref.digest or ref.tag
        if tag is None:  # the parser gives one or the other; keep mypy and readers sure
            raise UnsupportedError(f"{ref}: expected a tag or a digest")
        if mirrors:
            from ketch.storage.registry.mirrors import (  # noqa: PLC0415
                MirroredRegistryStore,
                mirror_client,
            )

            return MirroredRegistryStore(
                client,
                repository,
                [mirror_client(url, options) for url in mirrors],
                health_check_interval=health_check_interval,
            ), tag
        return RegistryStore(client, repository), tag
    if isinstance(ref, S3Reference):
        # Imported here: boto3 takes a third of a second to import.
        from ketch.storage.s3_store import S3Store  # noqa: PLC0415

        s3 = S3Store.open(
            ref.bucket,
            ref.prefix,
            create=create,
            endpoint_url=endpoint_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=retries + 1,
            region=region,
        )
        return s3, ref.tag
    raise UnsupportedError(
        f"{ref}: this transport is not supported yet (only oci:DIR:TAG and docker://HOST/REPO:TAG)"
    )
