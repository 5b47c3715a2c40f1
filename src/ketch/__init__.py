"""Ketch: lazily-loaded, deduplicated, verifiable container images.

The public Python API (docs/api.md)::

    import ketch

    with ketch.open_image("docker://registry.example/app:1.0") as image:
        print(image.open("/etc/os-release").read())

Names are imported on first use, so ``import ketch`` stays cheap for the CLI and daemons.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ketch.api.build import build, convert, read_prefetch_list
    from ketch.api.image import Image, ImageStat, UnpackReport, open_image
    from ketch.builder.image_builder import BuildOptions, BuildSummary
    from ketch.builder.progress import Progress
    from ketch.config import ImageOptions, RegistryOptions, S3Config, StoreOptions
    from ketch.errors import (
        ChunkReadError,
        IntegrityError,
        KetchError,
        NotFoundError,
        PathIsADirectoryError,
        PathNotFoundError,
        StorageError,
        UsageError,
    )
    from ketch.image.check import CheckReport

__version__ = "0.1.0"

_HOMES = {
    "open_image": "ketch.api.image",
    "Image": "ketch.api.image",
    "ImageStat": "ketch.api.image",
    "UnpackReport": "ketch.api.image",
    "convert": "ketch.api.build",
    "build": "ketch.api.build",
    "read_prefetch_list": "ketch.api.build",
    "BuildOptions": "ketch.builder.image_builder",
    "BuildSummary": "ketch.builder.image_builder",
    "Progress": "ketch.builder.progress",
    "CheckReport": "ketch.image.check",
    "ImageOptions": "ketch.config",
    "StoreOptions": "ketch.config",
    "RegistryOptions": "ketch.config",
    "S3Config": "ketch.config",
    "KetchError": "ketch.errors",
    "UsageError": "ketch.errors",
    "NotFoundError": "ketch.errors",
    "IntegrityError": "ketch.errors",
    "StorageError": "ketch.errors",
    "PathNotFoundError": "ketch.errors",
    "PathIsADirectoryError": "ketch.errors",
    "ChunkReadError": "ketch.errors",
}

__all__ = [
    "BuildOptions",
    "BuildSummary",
    "CheckReport",
    "ChunkReadError",
    "Image",
    "ImageOptions",
    "ImageStat",
    "IntegrityError",
    "KetchError",
    "NotFoundError",
    "PathIsADirectoryError",
    "PathNotFoundError",
    "Progress",
    "RegistryOptions",
    "S3Config",
    "StorageError",
    "StoreOptions",
    "UnpackReport",
    "UsageError",
    "__version__",
    "build",
    "convert",
    "open_image",
    "read_prefetch_list",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ketch' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
