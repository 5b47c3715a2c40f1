"""ketch snapshotter: serve containerd's snapshots API (the work is in ketch.snapshot)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType


def cmd_snapshotter(args: argparse.Namespace) -> int:
    """Serve in the foreground until SIGTERM or SIGINT, as a systemd unit runs it."""
    from ketch.snapshot.grpc_service import serve  # noqa: PLC0415

    config = args.config_values.snapshotter
    address = args.address or Path(config.address)
    root = args.root or Path(config.root)
    logging.basicConfig(format="ketch snapshotter: %(message)s", level=logging.INFO)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = serve(address, root)
    logging.getLogger("ketch.snapshot").info("serving %s on %s", root, address)
    try:
        while not stop.wait(3600):
            pass
    finally:
        running.stop()
    return 0
