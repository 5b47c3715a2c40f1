"""The public Python API's modules; import its names from ``ketch`` (``ketch.__all__``).

``image.py`` (``open_image``, ``Image``, ``ImageStat``), ``image_file.py`` (a file of an
image as a binary file object), ``chunk_source.py`` (which chunk cache, and the reader
over it), ``convert.py`` and ``fsspec_fs.py`` (the ``ketch`` fsspec protocol).
"""
