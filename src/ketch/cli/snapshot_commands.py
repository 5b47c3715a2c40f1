"""ketch snapshotter and ketch containerd pull (the work is in ketch.snapshot)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from ketch.cli.store_options import store_options
from ketch.cli.values import report
from ketch.daemon.process import setup_logging


def cmd_snapshotter(args: argparse.Namespace) -> int:
    """Serve in the foreground until SIGTERM or SIGINT, as a systemd unit runs it."""
    from ketch.snapshot.grpc_service import serve  # noqa: PLC0415

    config = args.config_values.snapshotter
    address = args.address or Path(config.address)
    root = args.root or Path(config.root)
    setup_logging()  # the daemons' one line format
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = serve(address, root, Path(args.config_values.cache.dir))
    logging.getLogger("ketch.snapshot").info("serving %s on %s", root, address)
    try:
        while not stop.wait(3600):
            pass
    finally:
        running.stop()
    return 0


def cmd_containerd_pull(args: argparse.Namespace) -> int:
    """Pull a Ketch image into containerd as remote snapshots (no layer download)."""
    from ketch.snapshot.containerd_api import ContainerdAPI  # noqa: PLC0415
    from ketch.snapshot.pull import pull  # noqa: PLC0415

    with ContainerdAPI(args.address, args.namespace) as api:
        result = pull(args.image, store_options(args, args.config_values), api, args.snapshotter)
    report(
        args,
        result.to_json(),
        f"pulled {result.image} ({result.manifest_digest}) into containerd as "
        f"{len(result.chain_ids)} {result.snapshotter} snapshots in {result.seconds:.1f}s",
    )
    return 0
