"""Keep a started test server in the foreground until SIGTERM/SIGINT, or until it dies;
and the ``with`` protocol of a server that is started and stopped.

Shared by the scripts that run servers for tests by hand (registry, HTTP proxy, S3) and
by the benchmarks' link emulator.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")


def serve_until_signal(alive: Callable[[], bool], stop: Callable[[], None], label: str) -> int:
    """0 after a signal, 1 if the server died first; the server is stopped either way."""
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stopping.wait(0.2):
            if not alive():
                print(f"{label}: the server exited", file=sys.stderr)
                return 1
        return 0
    finally:
        stop()


class Started(Generic[T]):
    """``with server as handle``: ``start()`` gives the handle, ``stop()`` ends it all."""

    def start(self) -> T:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> T:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
