"""image layer: a Ketch image as manifest, config, bootstrap and blobs."""
