"""Daemon processes: forked into a session of their own with their output in a log, and
logging in structured lines. The mount daemon, the node service and the daemons the node
service starts are all made here."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ketch.daemon.state import open_log

_FORMAT = "ts=%(asctime)s level=%(levelname)s pid=%(process)d msg=%(message)s"


def setup_logging() -> None:
    """``ketch.*`` loggers write one ``key=value`` line per event to stderr (the log)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger("ketch")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def log_to(log_file: Path) -> None:
    """Send this process's output to ``log_file`` (appended, mode 0600)."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = open_log(log_file)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def fork_detached(body: Callable[[], int], log_file: Path, *, orphan: bool = False) -> int:
    """Fork a process in a session of its own, stdin from /dev/null and its output in
    ``log_file``, that runs ``body`` and exits with its code (70, with the traceback in
    the log, if it raises). The child's pid; with ``orphan`` it forks twice, so that the
    process is init's child (no zombie for a long-lived parent), and returns 0."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        if orphan:
            os.waitpid(pid, 0)  # the middle process exits at once
            return 0
        return pid
    code = 70
    try:
        os.setsid()
        if orphan and os.fork():
            os._exit(0)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        log_to(log_file)
        code = body()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
