"""containerd snapshotter: containerd's snapshots API over gRPC, a sibling of ``cli``.

``grpc_service`` is the thin gRPC adapter (refusals become their status, anything else
INTERNAL with one log line); ``snapshotter`` has the operations and mounts of containerd's
overlayfs snapshotter; ``metadata`` keeps snapshots in SQLite; ``remote`` makes Ketch
layers remote snapshots (a FUSE mount through the daemon launcher); ``pull`` is ``ketch
containerd pull`` over ``containerd_api``. ``protos/`` holds containerd's and CRI's
``.proto`` files and the generated stubs. docs/containerd.md is the user's guide.
"""
