"""fs layer."""
