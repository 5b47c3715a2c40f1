"""Start a daemon detached from the terminal and wait until it is ready; stop it.

The daemon is a fresh process (not a fork of this one) in its own session. It reports
readiness, or the reason it failed, on an inherited pipe, so `ketch mount` returns only
once the mount is usable, or fails with the daemon's own one-line reason.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

from ketch.daemon.state import MountRecord, is_mounted, pid_alive, read_record, remove_record
from ketch.errors import KetchError, NotFoundError, StorageError

READY = b"ready"


def start_detached(command: list[str], log_file: Path, timeout: float = 120.0) -> int:
    """Run ``command --ready-fd N`` in the background; its pid once it says ready."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--ready-fd", str(write_end)],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    os.close(write_end)
    message = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.2)
            if ready:
                chunk = os.read(read_end, 4096)
                if not chunk:
                    break  # the daemon closed the pipe: it said what it had to say, or died
                message += chunk
                if message.startswith(READY):
                    return process.pid
    finally:
        os.close(read_end)
    if not message:
        # The pipe closed without a word: the daemon died, or is about to.
        try:
            process.wait(timeout=2 if time.monotonic() < deadline else 0.1)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise StorageError(
                f"daemon did not become ready in {timeout:.0f}s (log: {log_file})"
            ) from None
    process.wait(timeout=10)
    text = message.decode(errors="replace").strip()
    if text.startswith("error "):
        code, _, reason = text[len("error ") :].partition(" ")
        error = KetchError(reason)
        error.exit_code = int(code) if code.isdigit() else 1
        raise error
    raise StorageError(
        f"daemon exited with {process.returncode} before it was ready: {_last_line(log_file)} "
        f"(log: {log_file})"
    )


def _last_line(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def signal_ready(fd: int | None, error: KetchError | None = None) -> None:
    if fd is None:
        return
    message = (
        READY + b"\n" if error is None else f"error {error.exit_code} {error.message}\n".encode()
    )
    try:
        os.write(fd, message)
    finally:
        os.close(fd)


def unmount(mountpoint: Path, timeout: float = 10.0) -> MountRecord | None:
    """Unmount and stop the daemon; clears a mount whose daemon died."""
    record = read_record(mountpoint)
    mounted = is_mounted(mountpoint)
    if not mounted and record is None:
        raise NotFoundError(f"{mountpoint}: not a Ketch mount")
    if mounted:
        alive = record is not None and pid_alive(record.pid)
        # A dead daemon leaves "transport endpoint is not connected": detach it lazily.
        command = (
            ["fusermount3", "-u", str(mountpoint)]
            if alive
            else ["fusermount3", "-uz", str(mountpoint)]
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 and is_mounted(mountpoint):
            reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
            raise StorageError(f"{mountpoint}: unmount failed: {reason}")
    if record is not None:
        _wait_for_exit(record.pid, timeout)
        remove_record(mountpoint)
    return record


def _wait_for_exit(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
