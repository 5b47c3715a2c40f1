"""Run an OCI runtime bundle with runc, in the foreground, and return its exit code.

``runc run`` without a terminal hands the container the very stdin/stdout/stderr it was
given, so the container's output goes straight to the caller's file descriptors (or to
the files passed in). It returns the container's exit code (128+N when killed by signal
N); runc's own failures (a missing executable, a bad config) also exit non-zero, and are
told apart by runc's JSON log, which then holds an error line. The container is always
deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import IO, Any

from ketch.errors import KetchError, NotFoundError, UsageError

_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")  # runc: ^[\w+-\.]+$
_KILL_GRACE_SECONDS = 10.0
_LOG_NAME = "runc.log"
_DEFAULT_ROOT = "/run/runc"  # runc's state directory for root

Stdio = int | IO[Any] | None
"""As ``subprocess``: None inherits the caller's descriptor, else a fd, a file or DEVNULL."""


def new_container_id(prefix: str = "ketch") -> str:
    """A container id unique on this machine: ``prefix`` and 48 random bits."""
    return f"{prefix}-{secrets.token_hex(6)}"


def find_runc(runc: str = "runc") -> str:
    """The path of the runc executable ``runc`` (a name on PATH or a path)."""
    path = shutil.which(runc)
    if path is None:
        raise NotFoundError(
            f"OCI runtime {runc!r}: expected an executable on PATH, found none; "
            "install runc (apt-get install runc, or make install)"
        )
    return path


def run_container(
    bundle: Path,
    container_id: str,
    *,
    runc: str = "runc",
    root: Path | None = None,
    stdin: Stdio = None,
    stdout: Stdio = None,
    stderr: Stdio = None,
    timeout: float | None = None,
) -> int:
    """Run the bundle ``bundle`` as container ``container_id``; return its exit code.

    ``root`` is runc's state directory (runc's default, /run/runc, when None). With
    ``timeout`` (seconds), a container still running then is killed and ``KetchError``
    raised. Interrupted (Ctrl-C), the container is killed too. Either way it is deleted.
    """
    if not _CONTAINER_ID.fullmatch(container_id):
        raise UsageError(
            f"container id {container_id!r}: expected 1 to 128 letters, digits, '_', '.', "
            "'+' or '-', starting with a letter or digit"
        )
    if not (bundle / "config.json").is_file():
        raise NotFoundError(f"bundle {bundle}: expected a config.json, found none")
    runc_command = [find_runc(runc)]
    if root is not None:
        runc_command += ["--root", str(root.absolute())]
    log = bundle.absolute() / _LOG_NAME
    log.unlink(missing_ok=True)
    command = [
        *runc_command,
        *("--log", str(log), "--log-format", "json"),
        *("run", "--bundle", str(bundle.absolute()), container_id),
    ]
    process = subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr)
    try:
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(runc_command, container_id, process)
            raise KetchError(
                f"container {container_id}: expected to exit within {timeout:g} s, found it "
                "still running; killed it"
            ) from None
        except BaseException:  # KeyboardInterrupt and the like: do not leave it running
            _kill(runc_command, container_id, process)
            raise
    except BaseException:
        _delete(runc_command, container_id, strict=False)
        raise
    # `runc run` removes the container as it exits; a state directory left behind means
    # it could not, and `runc delete` must (a process start saved on every run otherwise).
    if (Path(root or _DEFAULT_ROOT).absolute() / container_id).exists():
        _delete(runc_command, container_id, strict=True)
    if code != 0:
        failure = _runc_failure(log)
        if failure:
            raise KetchError(f"runc could not run container {container_id}: {failure}")
    return code


def _kill(runc_command: list[str], container_id: str, process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the container, then make sure ``runc run`` itself has ended."""
    subprocess.run(
        [*runc_command, "kill", container_id, "KILL"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    try:
        process.wait(_KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _delete(runc_command: list[str], container_id: str, *, strict: bool) -> None:
    """``runc delete --force``; a container that does not exist (runc run removed it on
    exit) is fine. Other failures raise when ``strict``, else are dropped: the caller is
    already raising something more telling."""
    result = subprocess.run(
        [*runc_command, "delete", "--force", container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 and "does not exist" not in result.stderr and strict:
        message = " ".join(result.stderr.split())[-300:]
        raise KetchError(
            f"runc delete --force {container_id}: expected exit 0, found "
            f"{result.returncode}: {message}"
        )


def _runc_failure(log: Path) -> str | None:
    """The last error runc logged, if it logged one: runc failed, not the container."""
    with contextlib.suppress(OSError):
        message = None
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in {"error", "fatal", "panic"}:
                    message = str(entry.get("msg", ""))
        return message
    return None
