"""oci layer: what the OCI specs define, Ketch-agnostic.

``reference`` parses skopeo-style references (and normalises Docker Hub names);
``mediatypes`` names media types and annotation keys; ``manifest`` and ``index`` parse
and write descriptors, manifests and indexes (deterministic JSON); ``layout`` reads and
atomically writes OCI layout directories; ``layer_stream`` decompresses a layer in a
background thread while checking its digest; ``tar_header`` (our own streaming tar
reader, for speed), ``tar_sparse`` (GNU sparse files in pax form) and ``tar_layer``
(checked, confined ``LayerEntry`` objects, whiteouts as entries) read layers.
"""
