"""Open the store an image reference names."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ketch.config import StoreOptions
from ketch.errors import UnsupportedError
from ketch.oci.reference import (
    ImageReference,
    OciLayoutReference,
    RegistryReference,
    S3Reference,
    parse_reference,
)

if TYPE_CHECKING:
    from ketch.storage.store import ImageStore


def open_store(
    reference: ImageReference | str,
    options: StoreOptions | None = None,
    *,
    create: bool = False,
) -> tuple[ImageStore, str]:
    """The store and tag of a reference; ``create`` makes a missing destination.

    For ``docker://HOST/REPO[:TAG|@DIGEST]`` the tag returned is the tag or the digest;
    ``options.registry`` goes whole to the registry client, and ``options.mirrors`` are
    registry mirror URLs that blob reads try first (``MirroredRegistryStore``). For
    ``s3://BUCKET/PREFIX[:TAG]``, ``options.s3`` names the endpoint and region ("": the
    ``AWS_*`` variables, else boto3's own choice), with the registry's timeouts and retries.
    """
    options = options or StoreOptions()
    network = options.registry
    ref = parse_reference(reference) if isinstance(reference, str) else reference
    if isinstance(ref, OciLayoutReference):
        # Imported here: the node service's clients never open a store themselves.
        from ketch.storage.oci_layout_store import OciLayoutStore  # noqa: PLC0415

        store = OciLayoutStore.create(ref.path) if create else OciLayoutStore.open(ref.path)
        return store, ref.tag
    if isinstance(ref, RegistryReference):
        # Imported here: httpx is not needed for local layouts.
        from ketch.storage.registry.client import RegistryClient  # noqa: PLC0415
        from ketch.storage.registry.store import RegistryStore  # noqa: PLC0415

        client = RegistryClient(ref.registry, network)
        repository = ref.api_repository
        tag = ref.digest or ref.tag
        if tag is None:  # the parser gives one or the other; keep mypy and readers sure
            raise UnsupportedError(f"{ref}: expected a tag or a digest")
        if options.mirrors:
            from ketch.storage.registry.mirrors import (  # noqa: PLC0415
                MirroredRegistryStore,
                mirror_client,
            )

            return MirroredRegistryStore(
                client,
                repository,
                [mirror_client(url, network) for url in options.mirrors],
                health_check_interval=options.health_check_interval,
            ), tag
        return RegistryStore(client, repository), tag
    if isinstance(ref, S3Reference):
        # Imported here: boto3 takes a third of a second to import.
        from ketch.storage.s3_store import S3Store  # noqa: PLC0415

        s3 = S3Store.open(
            ref.bucket,
            ref.prefix,
            create=create,
            endpoint_url=options.s3.endpoint_url or None,
            connect_timeout=network.connect_timeout,
            read_timeout=network.read_timeout,
            max_attempts=network.retries + 1,
            region=options.s3.region or None,
        )
        return s3, ref.tag
    raise UnsupportedError(
        f"{ref}: this transport is not supported yet (only oci:DIR:TAG and docker://HOST/REPO:TAG)"
    )
