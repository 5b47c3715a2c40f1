"""A process named by its pid and its start time: a pid alone is reused once its process
exits, the pair is not. Mount records, the node service's pid file and the OCI layout's
temporary area (``ketch.oci.layout``) name their owners this way."""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: field 3 (state) onwards."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(fields: list[str] | None) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (``fields`` start at field 3)."""
    try:
        return int(fields[19]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22): a pid
    and its start time name one process, where a pid alone is reused once it exits."""
    return _start_time(_stat_fields(pid))


def pid_alive(pid: int, started: int | None = None) -> bool:
    """``pid`` runs (a zombie, exited and not yet reaped, does not); with ``started``,
    it must also be the process that started then, not a later one given the same pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return False
    return started is None or _start_time(fields) == started


def this_process() -> tuple[int, int]:
    """This process's pid and start time (0 if /proc does not say)."""
    pid = os.getpid()
    return pid, process_start(pid) or 0
