"""builder layer: sources -> tree -> chunks -> blobs + bootstrap -> image.

``image_builder`` orchestrates both sources (an OCI image, ``dir_source``'s directory
walk) and the output order (blobs, bootstrap, config, manifest, tag); ``layer_builder``
turns one layer's entries into tree changes and one blob (chunks hashed and compressed on
a pool, laid out in tree order); ``chunker`` cuts fixed or FastCDC chunks (holes as
``ZeroRun``); ``chunk_index`` knows where every chunk already lives (lower layers, chunk
dictionaries); ``tree`` applies OCI overlay semantics; ``bootstrap_build`` numbers inodes
and computes digests bottom-up; ``progress`` is what a build reports.
"""
