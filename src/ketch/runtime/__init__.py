"""Containers: an overlayfs upper over a mounted image, an OCI runtime bundle, runc."""
