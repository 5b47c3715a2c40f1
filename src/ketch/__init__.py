"""Ketch: lazily-loaded, deduplicated, verifiable container images."""

__version__ = "0.1.0"
