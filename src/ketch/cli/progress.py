"""Progress for long work: bars on stderr when it is a terminal, else nothing at all.

rich takes tens of milliseconds to import, so a command whose stderr is not a terminal
(scripts, CI, benchmarks) never loads it.
"""

from __future__ import annotations

import sys
from types import TracebackType

from ketch.api.build import Progress as BuildProgress


class CliProgress(BuildProgress):
    """A build's layers, plus byte-counted tasks (unpack, check); draws nothing."""

    def __enter__(self) -> CliProgress:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Begin drawing (a subclass draws)."""

    def stop(self) -> None:
        """Stop drawing, leaving the last state on screen."""

    def bytes_task(self, label: str, total: int) -> int:
        del label, total
        return 0

    def advance_task(self, task: int, nbytes: int) -> None:
        del task, nbytes


def progress(enabled: bool | None = None) -> CliProgress:
    """Bars when ``enabled`` (None: when stderr is a terminal), else a silent stand-in."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return CliProgress()
    from ketch.cli.rich_progress import RichProgress  # noqa: PLC0415 - rich is slow to import

    return RichProgress(enabled=True)
