"""The public Python API's modules; import its names from ``ketch`` (``ketch.__all__``).

``image`` (``open_image``, ``Image``), ``image_file`` (a file of an image as a binary file
object), ``chunk_source`` (which chunk cache, and the reader over it), ``build``
(``convert``, ``build``), ``options`` (settings that depend on the image) and
``fsspec_fs`` (the ``ketch`` fsspec protocol).
"""
