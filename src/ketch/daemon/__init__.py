"""daemon layer: the processes that serve mounts.

``mount_daemon`` (one image mounted with FUSE; ``fuse_ops`` is the thin adapter over
``ImageFS``), ``launcher`` (where a daemon starts: the node service if one runs, else a
fork; waiting for ready), ``node_service`` (``ketch service``), ``process`` (the one
detach-fork and log format), ``state`` (the mount registry under ``/run/ketch``), ``api``
and ``metrics`` (the control API and Prometheus series), ``access_trace`` (files in
first-access order), ``container_run`` (``ketch run``), ``unix_path`` (socket paths of
any length).
"""
