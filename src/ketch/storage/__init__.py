"""storage layer: blobs and chunks, never inodes or image layout (a lint-imports contract).

Stores: ``store`` (the ``ImageStore`` interface of one repository, and the narrow
``BlobReader`` seam readers use), ``oci_layout_store``, ``registry/`` (the distribution
API on httpx, one module per part; its package docstring lists them), ``s3_store``,
``memory``, and ``open`` (the store a reference names). Every network request goes
through ``retry``'s one policy. The contract suite in ``tests/contract`` runs against
every store.

Reading: ``blobs`` (``BlobRef``: a blob named once on the read path), ``range_plan`` (the
one home of range planning and of the names of the three read-aheads), ``chunk_reader``
(fetch, decompress, verify; narrow a merged range that fails), ``chunk_cache`` (the
node-wide verified cache), ``cached_reader`` (memory tier + cache + single-flight
fetches + sequential prefetch), ``write_behind`` (cache fills off the reader's thread),
``windowed_reader`` (large windows for readers that walk an image in order).
"""
