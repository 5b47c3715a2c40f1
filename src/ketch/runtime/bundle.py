"""OCI runtime bundles (runtime-spec 1.0.2 ``config.json``) from an OCI image config.

The process follows docker's reading of the image config: arguments given to the run
replace ``Cmd`` and keep ``Entrypoint``; ``Env`` gets a default ``PATH``, ``HOSTNAME`` and
``HOME``; ``WorkingDir`` defaults to ``/``; ``User`` is ``uid``, ``uid:gid``, ``name`` or
``name:group``, names looked up in the image's own ``/etc/passwd`` and ``/etc/group``
as runc's libcontainer/user does. Everything else is what ``runc spec`` writes.

The image's files are untrusted: ``/etc/passwd`` may be a symlink meant for the host's,
or a device node. They are resolved inside the root filesystem (an absolute link target
starts again at the rootfs, ``..`` stops at it), walking directory file descriptors opened
with ``O_NOFOLLOW``, and only a regular file of bounded size is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ketch.errors import IntegrityError, NotFoundError, UsageError

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_ACCOUNT_FILE_SIZE = 4 << 20  # /etc/passwd, /etc/group: more is not an account database
MAX_SYMLINK_HOPS = 40  # as the kernel's path walk
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "no change" to the kernel
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62})")

# What `runc spec` (runc 1.1) generates.
DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
DEFAULT_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",  # noqa: S108 (a path in the container)
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
    {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    },
]
DEFAULT_NAMESPACES = ["pid", "network", "ipc", "uts", "mount"]
DEFAULT_MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
DEFAULT_READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


@dataclass(frozen=True, slots=True)
class ExecUser:
    """Who the container process runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def write_bundle(
    bundle: Path,
    rootfs: Path,
    image_config: Mapping[str, Any],
    *,
    args: list[str] | None,
    hostname: str,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Write ``bundle/config.json`` running ``image_config`` on ``rootfs``; return its path.

    ``image_config`` is the image's config blob (its ``config`` member holds ``Cmd`` and
    the rest), or that member alone. ``args``, when not empty, replace ``Cmd``. ``env``
    adds or overrides variables, after the image's.
    """
    spec = runtime_spec(rootfs, image_config, args=args, hostname=hostname, env=env)
    bundle.mkdir(parents=True, exist_ok=True)
    path = bundle / "config.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def runtime_spec(
    rootfs: Path,
    image_config: Mapping[str, Any],
    *,
    args: list[str] | None,
    hostname: str,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The runtime spec ``write_bundle`` writes, as a dict."""
    if not _HOSTNAME.fullmatch(hostname):
        raise UsageError(
            f"hostname {hostname!r}: expected letters, digits, '.' and '-', 1 to 63 "
            "characters, starting with a letter or digit"
        )
    params = _execution_parameters(image_config)
    user = resolve_user(rootfs, _string(params, "User"))
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": list(user.additional_gids),
            },
            "args": _process_args(params, args),
            "env": _process_env(params, hostname, user.home, env or {}),
            "cwd": _working_dir(params),
            "capabilities": {
                kind: list(DEFAULT_CAPABILITIES)
                for kind in ("bounding", "effective", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs.absolute()), "readonly": False},
        "hostname": hostname,
        "mounts": json.loads(json.dumps(DEFAULT_MOUNTS)),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in DEFAULT_NAMESPACES],
            "maskedPaths": list(DEFAULT_MASKED_PATHS),
            "readonlyPaths": list(DEFAULT_READONLY_PATHS),
        },
    }


def _execution_parameters(image_config: Mapping[str, Any]) -> Mapping[str, Any]:
    params = image_config.get("config", image_config)
    if params is None:  # a config blob may say "config": null
        return {}
    if not isinstance(params, Mapping):
        raise IntegrityError(
            f"image config: config: expected an object, found {type(params).__name__}"
        )
    return params


def _checked(field: str, value: str) -> str:
    if "\0" in value:
        raise IntegrityError(f"image config {field}: expected text, found a NUL byte")
    return value


def _string(params: Mapping[str, Any], field: str) -> str:
    value = params.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise IntegrityError(f"image config {field}: expected a string, found {value!r}")
    return _checked(field, value)


def _strings(params: Mapping[str, Any], field: str) -> list[str]:
    value = params.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IntegrityError(f"image config {field}: expected a list of strings, found {value!r}")
    return [_checked(field, v) for v in value]


def _process_args(params: Mapping[str, Any], args: list[str] | None) -> list[str]:
    entrypoint = _strings(params, "Entrypoint")
    if args and any("\0" in a for a in args):
        raise UsageError(f"command {args!r}: expected arguments without NUL bytes, found one")
    command = list(args) if args else _strings(params, "Cmd")
    argv = entrypoint + command
    if not argv:
        raise UsageError(
            "container command: expected an image Entrypoint or Cmd, or a command to run, "
            "found none"
        )
    return argv


def _process_env(
    params: Mapping[str, Any], hostname: str, home: str, extra: Mapping[str, str]
) -> list[str]:
    # Insertion order is the order runc sets them in; later values replace earlier ones.
    variables = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for entry in _strings(params, "Env"):
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise IntegrityError(f"image config Env: expected NAME=VALUE, found {entry!r}")
        variables[name] = value
    for name, value in extra.items():
        if not name or "=" in name or "\0" in name + value:
            raise UsageError(f"environment variable {name!r}: expected a NAME without '=' or NUL")
        variables[name] = value
    variables.setdefault("HOME", home)
    return [f"{name}={value}" for name, value in variables.items()]


def _working_dir(params: Mapping[str, Any]) -> str:
    cwd = _string(params, "WorkingDir") or "/"
    if not cwd.startswith("/"):
        raise IntegrityError(f"image config WorkingDir: expected an absolute path, found {cwd!r}")
    return cwd


# --- users and groups, read from the image ------------------------------------------


def resolve_user(rootfs: Path, spec: str) -> ExecUser:
    """The uid, gid, supplementary gids and home of the image ``User`` value ``spec``.

    As runc's libcontainer/user ``GetExecUser``: an empty user is uid 0; a user is matched
    by name, else by uid, in ``/etc/passwd``, and a numeric one need not be there; the
    group, when given, replaces the passwd gid, else the groups listing the user by name
    are its supplementary groups.
    """
    user_arg, has_group, group_arg = spec.partition(":")
    if has_group and not (user_arg and group_arg):
        raise UsageError(f"image user {spec!r}: expected user:group, found an empty part")

    passwd = _account_lines(rootfs, "/etc/passwd")
    users = [
        _PasswdEntry(f[0], int(f[2]), int(f[3]), f[5])
        for f in passwd or []
        if len(f) >= 6 and _is_id(f[2]) and _is_id(f[3])
    ]
    if not user_arg:
        entry = next((u for u in users if u.uid == 0), None)
    else:
        entry = next((u for u in users if u.name == user_arg), None) or next(
            (u for u in users if str(u.uid) == user_arg), None
        )
    if entry is not None:
        uid, gid, name, home = entry.uid, entry.gid, entry.name, entry.home
    elif not user_arg or _is_id(user_arg):
        uid, gid, name, home = _numeric_id(spec, user_arg or "0"), 0, "", "/"
    else:
        found = "no such entry" if passwd is not None else "no /etc/passwd"
        raise NotFoundError(
            f"image user {spec!r}: expected user {user_arg!r} in the image's /etc/passwd "
            f"({rootfs}), found {found}"
        )

    group_lines = _account_lines(rootfs, "/etc/group") if (name or has_group) else None
    groups = [
        _GroupEntry(f[0], int(f[2]), tuple(m for m in f[3].split(",") if m) if len(f) > 3 else ())
        for f in group_lines or []
        if len(f) >= 3 and _is_id(f[2])
    ]
    additional: list[int] = []
    if has_group:
        match = next((g for g in groups if g.name == group_arg), None)
        if match is not None:
            gid = match.gid
        elif _is_id(group_arg):
            gid = _numeric_id(spec, group_arg)
        else:
            found = "no such entry" if group_lines is not None else "no /etc/group"
            raise NotFoundError(
                f"image user {spec!r}: expected group {group_arg!r} in the image's /etc/group "
                f"({rootfs}), found {found}"
            )
    else:
        for group in groups:
            if name in group.members and group.gid != gid and group.gid not in additional:
                additional.append(group.gid)
    return ExecUser(uid, gid, tuple(additional), home or "/")


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _numeric_id(spec: str, text: str) -> int:
    value = int(text)
    if value > MAX_ID:
        raise UsageError(f"image user {spec!r}: expected ids up to {MAX_ID}, found {value}")
    return value


@dataclass(frozen=True, slots=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _account_lines(rootfs: Path, path: str) -> list[list[str]] | None:
    """The colon-separated fields of each line of ``path`` in the image; None if missing."""
    data = read_file_in_root(rootfs, path, MAX_ACCOUNT_FILE_SIZE)
    if data is None:
        return None
    return [
        line.split(":")
        for line in data.decode("utf-8", errors="replace").splitlines()
        if line.strip() and not line.startswith(("#", "+", "-"))
    ]


def read_file_in_root(root: Path, path: str, max_size: int) -> bytes | None:
    """The bytes of ``path`` resolved inside ``root`` as if ``root`` were ``/``; None if
    missing. Symlinks are followed within ``root`` only; the file must be regular and at
    most ``max_size`` bytes, else ``UsageError``."""
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    flags_file = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    where = f"{path} in {root}"
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: the next component last
    try:
        stack = [os.open(root, flags_dir)]  # open directories from root down to the current
    except OSError as exc:
        raise NotFoundError(f"rootfs {root}: expected a directory, found {exc.strerror}") from None
    hops = 0
    try:
        while pending:
            part = pending.pop()
            if part == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                info = os.stat(part, dir_fd=stack[-1], follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise UsageError(f"{where}: could not look at {part!r}: {exc.strerror}") from None
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UsageError(
                        f"{where}: expected at most {MAX_SYMLINK_HOPS} symlinks on the way, "
                        "found more (a loop?)"
                    )
                target = os.readlink(part, dir_fd=stack[-1])
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
                continue
            if stat.S_ISDIR(info.st_mode) and pending:
                try:
                    stack.append(os.open(part, flags_dir, dir_fd=stack[-1]))
                except OSError as exc:  # replaced under us by a non-directory
                    raise UsageError(f"{where}: could not open {part!r}: {exc}") from None
                continue
            if pending:  # a file in the middle of the path
                return None
            if not stat.S_ISREG(info.st_mode):
                raise UsageError(f"{where}: expected a regular file, found {_kind(info.st_mode)}")
            return _read_regular(part, stack[-1], flags_file, max_size, where)
        raise UsageError(f"{where}: expected a regular file, found a directory")
    finally:
        for fd in stack:
            os.close(fd)


def _read_regular(name: str, dir_fd: int, flags: int, max_size: int, where: str) -> bytes:
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:  # replaced by a symlink under us: O_NOFOLLOW refuses it
        raise UsageError(f"{where}: could not open it safely: {exc}") from None
    with contextlib.closing(os.fdopen(fd, "rb")) as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{where}: expected a regular file, found {_kind(info.st_mode)}")
        data = handle.read(max_size + 1)
    if len(data) > max_size:
        raise UsageError(f"{where}: expected at most {max_size} bytes, found more")
    return data


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return f"mode {mode:o}"
