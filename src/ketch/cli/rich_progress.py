"""Progress bars drawn on stderr with rich (loaded only when stderr is a terminal)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from ketch.cli.progress import CliProgress


class RichProgress(CliProgress):
    """One bar per layer (bytes of file data read); silent when not on a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        console = Console(stderr=True)
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not self.enabled,
            transient=False,
        )
        self._task: TaskID | None = None

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def layer_started(self, name: str, total: int | None) -> None:
        label = name[:19] if name.startswith("sha256:") else name[-40:]
        self._task = self._progress.add_task(label, total=None)
        del total  # compressed size: not comparable to the bytes we count

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, nbytes)

    def layer_finished(self, name: str) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, total=task.completed)
        self._task = None

    def bytes_task(self, label: str, total: int) -> int:
        return self._progress.add_task(label, total=total)

    def advance_task(self, task: int, nbytes: int) -> None:
        self._progress.advance(TaskID(task), nbytes)
