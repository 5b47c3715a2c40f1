"""fs layer: an image as a filesystem, defined once.

``image_fs`` is the view (lookup, getattr, readdir, readlink, xattrs, read by inode) that
the FUSE adapter, the public API and ``unpack`` share; ``path_names`` finds many inodes'
paths in one scan per directory; ``unpack`` writes the tree as ``umoci unpack`` would.
"""
