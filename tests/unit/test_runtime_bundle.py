"""OCI runtime bundles from image configs: docker's args/env/cwd rules, and users looked up
in the image's own /etc/passwd and /etc/group without ever leaving its root filesystem."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import IntegrityError, NotFoundError, UsageError
from ketch.runtime.bundle import (
    DEFAULT_PATH,
    ExecUser,
    read_file_in_root,
    resolve_user,
    runtime_spec,
    write_bundle,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """\
root:x:0:
adm:x:4:alice
wheel:x:10:root,alice
staff:x:50:
alice:x:1000:alice
nogroup:x:65534:
"""
HOST_ONLY_PASSWD = "hostonly:x:4000:4000:host:/home/hostonly:/bin/sh\n"


def _rootfs(tmp_path: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    if passwd is not None:
        (rootfs / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (rootfs / "etc" / "group").write_text(group)
    return rootfs


def _host_file(tmp_path: Path) -> Path:
    """A file outside the rootfs standing for the host's /etc/passwd."""
    host = tmp_path / "host" / "etc" / "passwd"
    host.parent.mkdir(parents=True)
    host.write_text(HOST_ONLY_PASSWD)
    return host


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", ExecUser(0, 0, (10,), "/root")),
        ("root", ExecUser(0, 0, (10,), "/root")),
        ("alice", ExecUser(1000, 1000, (4, 10), "/home/alice")),
        ("1000", ExecUser(1000, 1000, (4, 10), "/home/alice")),
        ("alice:staff", ExecUser(1000, 50, (), "/home/alice")),
        ("alice:50", ExecUser(1000, 50, (), "/home/alice")),
        ("1000:4343", ExecUser(1000, 4343, (), "/home/alice")),
        ("nobody", ExecUser(65534, 65534, (), "/nonexistent")),
        ("4242", ExecUser(4242, 0, (), "/")),
        ("4242:staff", ExecUser(4242, 50, (), "/")),
        ("4242:4343", ExecUser(4242, 4343, (), "/")),
    ],
)
def test_user_forms_are_resolved_from_the_image(
    tmp_path: Path, spec: str, expected: ExecUser
) -> None:
    assert resolve_user(_rootfs(tmp_path), spec) == expected


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("bob", NotFoundError, r"expected user 'bob' in the image's /etc/passwd .*no such entry"),
        ("alice:ops", NotFoundError, r"expected group 'ops' in the image's /etc/group"),
        ("alice:", UsageError, "expected user:group"),
        (":staff", UsageError, "expected user:group"),
        ("99999999999", UsageError, "expected ids up to"),
        ("\u00b2", NotFoundError, "expected user '\u00b2'"),  # isdigit(), not an id
    ],
)
def test_bad_users_are_clear_errors(
    tmp_path: Path, spec: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        resolve_user(_rootfs(tmp_path), spec)
    assert "\n" not in str(info.value)


def test_numeric_users_need_no_passwd_but_names_do(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, passwd=None, group=None)
    assert resolve_user(rootfs, "") == ExecUser(0, 0, (), "/")
    assert resolve_user(rootfs, "123:456") == ExecUser(123, 456, (), "/")
    with pytest.raises(NotFoundError, match="found no /etc/passwd"):
        resolve_user(rootfs, "alice")
    with pytest.raises(NotFoundError, match="found no /etc/group"):
        resolve_user(rootfs, "123:staff")


def test_passwd_symlinked_to_the_hosts_is_not_read(tmp_path: Path) -> None:
    host = _host_file(tmp_path)
    rootfs = _rootfs(tmp_path, passwd=None)
    os.symlink(host, rootfs / "etc" / "passwd")  # absolute: means rootfs + that path
    with pytest.raises(NotFoundError, match=r"'hostonly'.*found no /etc/passwd"):
        resolve_user(rootfs, "hostonly")


def test_passwd_symlinked_to_etc_passwd_is_a_loop_not_the_hosts_file(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, passwd=None)
    os.symlink("/etc/passwd", rootfs / "etc" / "passwd")
    with pytest.raises(UsageError, match="symlinks on the way"):
        resolve_user(rootfs, "root")


def test_relative_links_stop_at_the_rootfs(tmp_path: Path) -> None:
    host = _host_file(tmp_path)
    rootfs = _rootfs(tmp_path, passwd=None)
    # As many ".." as it takes to reach / from the rootfs, then down to the host file.
    escape = "../" * (len(rootfs.parts) + 2) + str(host).lstrip("/")
    os.symlink(escape, rootfs / "etc" / "passwd")
    assert read_file_in_root(rootfs, "/etc/passwd", 1 << 20) is None
    # A directory on the way may not lead out either.
    os.symlink(host.parent.parent, rootfs / "hostroot")
    assert read_file_in_root(rootfs, "/hostroot/etc/passwd", 1 << 20) is None
    with pytest.raises(NotFoundError):
        resolve_user(rootfs, "hostonly")


def test_links_inside_the_rootfs_are_followed(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, passwd=None)
    real = rootfs / "usr" / "share" / "base-passwd" / "passwd"
    real.parent.mkdir(parents=True)
    real.write_text(PASSWD)
    os.symlink("/usr/share/base-passwd/passwd", rootfs / "etc" / "passwd")
    (rootfs / "lib").symlink_to("usr/share")
    assert read_file_in_root(rootfs, "/lib/base-passwd/../base-passwd/passwd", 1 << 20) == (
        PASSWD.encode()
    )
    assert resolve_user(rootfs, "alice").uid == 1000


def test_only_bounded_regular_files_are_read(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path, passwd=None)
    os.mkfifo(rootfs / "etc" / "passwd")  # opening it for reading would block
    with pytest.raises(UsageError, match="expected a regular file, found a FIFO"):
        resolve_user(rootfs, "alice")
    with pytest.raises(UsageError, match="found a directory"):
        read_file_in_root(rootfs, "/etc", 100)
    with pytest.raises(UsageError, match="expected at most 10 bytes"):
        read_file_in_root(rootfs, "/etc/group", 10)


def _config(**params: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": params}


def test_args_replace_cmd_and_keep_entrypoint(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    config = _config(Entrypoint=["/init", "--"], Cmd=["serve", "-v"])

    def argv(args: list[str] | None) -> list[str]:
        spec = runtime_spec(rootfs, config, args=args, hostname="h")
        result: list[str] = spec["process"]["args"]
        return result

    assert argv(None) == ["/init", "--", "serve", "-v"]
    assert argv([]) == ["/init", "--", "serve", "-v"]
    assert argv(["sh", "-c", "true"]) == ["/init", "--", "sh", "-c", "true"]
    plain = runtime_spec(rootfs, _config(Cmd=["bash"]), args=["ls"], hostname="h")
    assert plain["process"]["args"] == ["ls"]
    with pytest.raises(UsageError, match="expected an image Entrypoint or Cmd"):
        runtime_spec(rootfs, _config(Cmd=None), args=None, hostname="h")


def test_env_cwd_and_user_follow_docker(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    spec = runtime_spec(
        rootfs,
        _config(Cmd=["true"], Env=["LANG=C.UTF-8", "EMPTY="], User="alice", WorkingDir="/app"),
        args=None,
        hostname="box",
        env={"EXTRA": "1", "LANG": "C"},
    )["process"]
    assert spec["env"] == [
        f"PATH={DEFAULT_PATH}",
        "HOSTNAME=box",
        "LANG=C",
        "EMPTY=",
        "EXTRA=1",
        "HOME=/home/alice",
    ]
    assert spec["cwd"] == "/app"
    assert spec["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [4, 10]}
    # The image's own PATH and HOME win; the inner config object alone is accepted too.
    inner = {"Cmd": ["true"], "Env": ["PATH=/bin", "HOME=/srv"]}
    spec = runtime_spec(rootfs, inner, args=None, hostname="box")["process"]
    assert spec["env"] == ["PATH=/bin", "HOSTNAME=box", "HOME=/srv"]
    assert spec["cwd"] == "/"
    assert spec["user"] == {"uid": 0, "gid": 0, "additionalGids": [10]}


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"Cmd": "true"}, "Cmd: expected a list of strings"),
        ({"Cmd": ["true"], "Env": ["NOVALUE"]}, "Env: expected NAME=VALUE"),
        ({"Cmd": ["true"], "WorkingDir": "app"}, "WorkingDir: expected an absolute path"),
        ({"Cmd": ["tr\0ue"]}, "NUL"),
        ({"Cmd": ["true"], "User": 0}, "User: expected a string"),
    ],
)
def test_malformed_image_configs_are_integrity_errors(
    tmp_path: Path, params: dict[str, Any], match: str
) -> None:
    with pytest.raises(IntegrityError, match=match):
        runtime_spec(_rootfs(tmp_path), _config(**params), args=None, hostname="h")


def test_write_bundle_writes_a_runc_config(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    path = write_bundle(
        tmp_path / "bundle", rootfs, _config(Cmd=["true"]), args=None, hostname="ketch-1"
    )
    assert path == tmp_path / "bundle" / "config.json"
    spec = json.loads(path.read_text())
    assert spec["ociVersion"] == "1.0.2"
    assert spec["root"] == {"path": str(rootfs), "readonly": False}
    assert spec["hostname"] == "ketch-1"
    assert spec["process"]["terminal"] is False
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert [n["type"] for n in spec["linux"]["namespaces"]] == [
        "pid",
        "network",
        "ipc",
        "uts",
        "mount",
    ]
    assert {m["destination"] for m in spec["mounts"]} >= {
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
    }
    with pytest.raises(UsageError, match="hostname 'bad host'"):
        write_bundle(tmp_path / "b2", rootfs, _config(Cmd=["true"]), args=None, hostname="bad host")
