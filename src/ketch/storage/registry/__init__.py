"""A client of the OCI distribution spec (registry API v2), on httpx, and the stores
over it. One module per job:

- ``transport.py``: options, connections, TLS and proxy, redirects, the retry policy
  (``storage/retry.py``) and the error of every unexpected answer;
- ``auth.py``: credentials (``--creds``, the Docker config) and the challenge flow
  (anonymous, Basic, Bearer tokens per scope);
- ``manifests.py``: manifests, indexes (a platform chosen) and tags;
- ``blobs.py``: blob reads: ``HEAD``, whole, ranged, streamed with resume;
- ``uploads.py``: monolithic, chunked and cross-repository mount uploads;
- ``referrers.py``: the referrers API and its fallback tag;
- ``client.py``: ``RegistryClient``, the parts above on one transport;
- ``store.py``: ``RegistryStore``, the ``ImageStore`` over one repository;
- ``mirrors.py``: ``MirroredRegistryStore``, blob reads through registry mirrors.
"""
