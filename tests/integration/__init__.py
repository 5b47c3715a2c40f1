"""Integration tests: Ketch against real components, images and hostile inputs."""
