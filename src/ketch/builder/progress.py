"""What the builder reports while it works; the CLI draws it (kept apart from the builder
so that commands which only draw progress do not load it)."""

from __future__ import annotations


class Progress:
    """Does nothing; a subclass draws."""

    def layer_started(self, name: str, total: int | None) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def layer_finished(self, name: str) -> None: ...
