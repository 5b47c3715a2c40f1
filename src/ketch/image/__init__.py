"""image layer: a Ketch image over OCI, between ``storage`` (bytes and blobs, which knows
none of this: an import-linter contract) and its users ``builder``, ``fs`` and ``daemon``.

``layout`` is the manifest and config (docs/format.md §6), read and written; ``ketch_image``
opens an image, its bootstrap in memory or mapped from ``bootstrap_cache``; ``check``
verifies every chunk of every blob; ``inspect`` summarises the bootstrap.
"""
