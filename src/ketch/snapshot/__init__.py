"""containerd snapshotter: serves containerd's snapshots API over gRPC (a sibling of cli)."""
