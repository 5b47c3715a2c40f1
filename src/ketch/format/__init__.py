"""format layer: bytes <-> records, and nothing else (docs/format.md is the spec).

``records`` holds every on-disk record (a ``struct.Struct`` with one comment per field and
a frozen dataclass with ``pack``/``unpack``); ``digests`` and ``codecs`` the digest
algorithms and chunk codecs, each with a one-byte wire id; ``merkle`` the node digests;
``xattrs`` the xattr block; ``bootstrap_writer`` lays records out and seals the
superblock; ``bootstrap`` reads a bootstrap in place (lookup, children, chunks for a
range); ``bootstrap_verify`` recomputes every digest and checks the structure; ``blob``
writes data blobs and reads their tables; ``prefetch_list`` parses prefetch lists.
Known-answer vectors for all of it are in ``tests/vectors/format_v1``.
"""
