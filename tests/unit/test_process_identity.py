"""A pid in a record names a process only with its start time: pids are reused.

A daemon or node service that died leaves its mount record or pid file behind; once the
kernel gives the pid to another process, `ketch umount` and `ketch service stop` must
leave that process alone (they used to SIGKILL or SIGTERM it).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.daemon import node_service
from ketch.daemon.launcher import service_socket, unmount
from ketch.daemon.state import (
    MountRecord,
    read_record,
    record_path,
    write_record,
)
from ketch.errors import NotFoundError
from ketch.process_identity import pid_alive, process_start


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process unrelated to Ketch, alive for the test."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KETCH_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_pid_alive_checks_the_start_time_when_given() -> None:
    me = os.getpid()
    started = process_start(me)
    assert started is not None and started > 0
    assert pid_alive(me) and pid_alive(me, started)
    assert not pid_alive(me, started + 1)


def test_umount_of_a_dead_daemon_leaves_a_process_with_its_pid_alone(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    started = process_start(bystander.pid)
    assert started is not None
    # The daemon died; its pid now belongs to the bystander, which started later.
    write_record(
        MountRecord(
            mountpoint=str(mountpoint),
            pid=bystander.pid,
            image="oci:/nowhere:t",
            manifest_digest="sha256:" + "0" * 64,
            root_digest="blake3:" + "0" * 64,
            api_sock=str(tmp_path / "api.sock"),
            log_file=str(tmp_path / "log"),
            started=started - 1,
        )
    )
    record = read_record(mountpoint)
    assert record is not None and not record.alive()
    assert unmount(mountpoint, timeout=0.5) is not None
    assert bystander.poll() is None  # not killed
    assert not record_path(mountpoint).exists()


def test_service_stop_leaves_a_process_with_the_dead_services_pid_alone(
    state: Path, bystander: subprocess.Popen[bytes]
) -> None:
    started = process_start(bystander.pid)
    assert started is not None
    state.mkdir(parents=True)
    node_service.pid_file().write_text(f"{bystander.pid} {started - 1}\n")
    service_socket().parent.mkdir(parents=True, exist_ok=True)
    service_socket().touch()  # the socket a killed service leaves
    assert node_service.service_pid() is None
    with pytest.raises(NotFoundError, match="no node service is running"):
        node_service.stop_service(timeout=0.5)
    assert bystander.poll() is None


@pytest.mark.parametrize(
    "damage",
    [
        {"pid": "123"},
        {"pid": -5},
        {"pid": 0},
        {"started": 1.5},
        {"mountpoint": 7},
        {"unknown_field": 1},
    ],
)
def test_a_damaged_mount_record_is_no_record(
    tmp_path: Path, damage: dict[str, object], bystander: subprocess.Popen[bytes]
) -> None:
    mountpoint = tmp_path / "mnt"
    fields: dict[str, object] = {
        "mountpoint": str(mountpoint),
        "pid": bystander.pid,
        "image": "oci:/nowhere:t",
        "manifest_digest": "sha256:" + "0" * 64,
        "root_digest": "blake3:" + "0" * 64,
        "api_sock": str(tmp_path / "api.sock"),
        "log_file": str(tmp_path / "log"),
        "started": 0,
    }
    path = record_path(mountpoint)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(fields))
    assert read_record(mountpoint) is not None  # the sound record reads
    path.write_text(json.dumps({**fields, **damage}))
    assert read_record(mountpoint) is None
    path.write_text("[1, 2]")
    assert read_record(mountpoint) is None


def test_a_hostile_mount_record_reads_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ketch.daemon.state import all_records, read_record, record_path  # noqa: PLC0415

    monkeypatch.setenv("KETCH_STATE_DIR", str(tmp_path))
    mountpoint = tmp_path / "mnt"
    path = record_path(mountpoint)
    path.parent.mkdir(parents=True)
    for text in ("[" * 100_000, '{"pid": ' + "9" * 5000 + "}"):
        path.write_text(text)
        assert read_record(mountpoint) is None
        assert all_records() == []
