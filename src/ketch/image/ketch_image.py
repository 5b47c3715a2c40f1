"""Open a Ketch image: resolve its tag, find its bootstrap through the manifest, and read
the bootstrap into memory or map it from the bootstrap cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ketch.errors import IntegrityError
from ketch.format.bootstrap import Bootstrap
from ketch.image.bootstrap_cache import cached_bootstrap
from ketch.image.layout import bootstrap_layer
from ketch.oci.manifest import Descriptor, Manifest, Platform
from ketch.storage.store import ImageStore

MAX_BOOTSTRAP_SIZE = 1 << 32


@dataclass(slots=True)
class KetchImage:
    store: ImageStore
    tag: str
    descriptor: Descriptor
    manifest: Manifest
    bootstrap_layer: Descriptor
    bootstrap: Bootstrap

    @property
    def name(self) -> str:
        return f"{self.store.name}:{self.tag}"


def open_ketch_image(
    store: ImageStore,
    tag: str,
    *,
    platform: Platform | None = None,
    cache_dir: Path | None = None,
    resolved: tuple[Descriptor, Manifest] | None = None,
) -> KetchImage:
    """Resolve ``tag`` (unless the caller did: ``resolved``) and open its bootstrap: in
    memory, or mmapped from ``cache_dir``."""
    descriptor, manifest = resolved or store.resolve(tag, platform)[:2]
    where = f"{store.name}:{tag}"
    layer = bootstrap_layer(manifest, where)
    if layer.size > MAX_BOOTSTRAP_SIZE:
        raise IntegrityError(
            f"{where}: bootstrap size: expected <= {MAX_BOOTSTRAP_SIZE}, found {layer.size}"
        )
    if cache_dir is None:
        data = store.read_blob(layer.digest, max_size=layer.size)
        bootstrap = Bootstrap(data, name=f"bootstrap {layer.digest}")
    else:
        bootstrap = cached_bootstrap(store, layer, cache_dir)
    return KetchImage(store, tag, descriptor, manifest, layer, bootstrap)
