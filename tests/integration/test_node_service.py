"""The node service: mounts started through it behave as mounts started by `ketch mount`,
errors come back as the same one-line errors, and stopping it leaves mounts serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.daemon.state import read_record
from tests.integration.ketch_cli import KETCH, ketch


@pytest.fixture(scope="module")
def base_layout(corpus_oci: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("service-layout")
    ketch("convert", f"oci:{corpus_oci}:base", f"oci:{layout}:base")
    return layout


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state dir; every mount and the service are stopped at the end."""
    state = tmp_path / "state"
    monkeypatch.setenv("KETCH_STATE_DIR", str(state))
    yield state
    for record in (state / "mounts").glob("*.json") if (state / "mounts").exists() else []:
        subprocess.run(
            [*KETCH, "umount", json.loads(record.read_text())["mountpoint"]],
            capture_output=True,
            check=False,
        )
    subprocess.run([*KETCH, "service", "stop"], capture_output=True, check=False)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_mount_through_the_service(state: Path, base_layout: Path, tmp_path: Path) -> None:
    started = json.loads(ketch("service", "start", "--json").stdout)
    assert json.loads(ketch("service", "status", "--json").stdout)["pid"] == started["pid"]
    assert ketch("service", "start", check=False).returncode != 0  # one per state dir
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = json.loads(
        ketch(
            "mount",
            f"oci:{base_layout}:base",
            str(mountpoint),
            "--cache-dir",
            str(tmp_path / "c"),
            "--json",
        ).stdout
    )
    record = read_record(mountpoint)
    assert record is not None and record.pid == result["pid"]
    # The daemon is the service's grandchild, not a child of the `ketch mount` process.
    assert _parent(record.pid) != started["pid"]
    assert os.readlink(mountpoint / "bin") == "usr/bin"
    assert (mountpoint / "etc" / "debian_version").read_text().strip()
    # Stopping the service leaves the mount serving; umount still stops its daemon.
    ketch("service", "stop")
    assert ketch("service", "status", check=False).returncode == 3
    assert (mountpoint / "etc" / "os-release").read_text().startswith("PRETTY_NAME")
    ketch("umount", str(mountpoint))
    assert read_record(mountpoint) is None and not os.path.ismount(mountpoint)


def test_a_state_dir_deeper_than_a_socket_address_holds(
    base_layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A unix socket address holds 108 bytes; test and state dirs are often deeper.
    state = tmp_path / ("d" * 60) / ("e" * 60) / "state"
    monkeypatch.setenv("KETCH_STATE_DIR", str(state))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        started = json.loads(ketch("service", "start", "--json").stdout)
        assert json.loads(ketch("service", "status", "--json").stdout)["pid"] == started["pid"]
        ketch(
            "mount", f"oci:{base_layout}:base", str(mountpoint), "--cache-dir", str(tmp_path / "c")
        )
        record = read_record(mountpoint)
        assert record is not None and _parent(record.pid) != started["pid"]  # via the service
        status = json.loads(ketch("status", str(mountpoint), "--json").stdout)
        assert status["daemon"]["pid"] == record.pid
    finally:
        subprocess.run([*KETCH, "umount", str(mountpoint)], capture_output=True, check=False)
        subprocess.run([*KETCH, "service", "stop"], capture_output=True, check=False)


def test_daemon_errors_come_back_as_one_line(
    state: Path, base_layout: Path, tmp_path: Path
) -> None:
    ketch("service", "start")
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    missing = ketch("mount", f"oci:{base_layout}:nosuchtag", str(mountpoint), check=False)
    assert missing.returncode not in (0, 70)
    assert missing.stderr.count("\n") == 1 and "nosuchtag" in missing.stderr
    not_a_dir = ketch("mount", f"oci:{base_layout}:base", str(tmp_path / "none"), check=False)
    assert not_a_dir.returncode == 2 and "not a directory" in not_a_dir.stderr
    assert not os.path.ismount(mountpoint)


def test_malformed_requests_are_refused(state: Path) -> None:
    ketch("service", "start")
    for request in (
        b"not json",
        b'{"daemon": {}, "env": {}, "cwd": "/"}',
        b"[]",
        b"1" * 5000,  # json.loads raises ValueError (too many digits), not a JSON error
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(state / "service.sock"))
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            answer = sock.makefile("rb").read()
        assert answer.startswith(b"error 2 node service request"), answer
    # The service still serves after refusing them.
    assert json.loads(ketch("service", "status", "--json").stdout)["state"] == "running"


def test_run_through_the_service_reuses_its_mount(
    state: Path, base_layout: Path, tmp_path: Path
) -> None:
    ketch("service", "start")
    image = f"oci:{base_layout}:base"
    cache = str(tmp_path / "cache")
    first = ketch("run", image, "--cache-dir", cache, "--", "cat", "/etc/debian_version")
    assert first.stdout.strip() and first.stdout.strip()[0].isdigit()
    records = list((state / "mounts").glob("*.json"))
    assert len(records) == 1  # the mount stays for the next run
    record = json.loads(records[0].read_text())
    assert Path(record["mountpoint"]).parent == state / "mnt"
    ketch("run", image, "--cache-dir", cache, "--rm-mount", "--", "true")
    again = ketch("run", image, "--cache-dir", cache, "--", "sh", "-c", "exit 7", check=False)
    assert again.returncode == 7
    # Every run found the same live mount; --rm-mount leaves a mount it did not make.
    assert [json.loads(r.read_text())["pid"] for r in (state / "mounts").glob("*.json")] == [
        record["pid"]
    ]
    missing = ketch("run", f"oci:{base_layout}:nosuchtag", "--cache-dir", cache, check=False)
    assert missing.returncode not in (0, 70) and "nosuchtag" in missing.stderr


@pytest.mark.parametrize("service", [True, False], ids=["service", "no-service"])
def test_runs_started_together_make_one_mount(
    service: bool, state: Path, base_layout: Path, tmp_path: Path
) -> None:
    if service:
        ketch("service", "start")
    command = [*KETCH, "run", f"oci:{base_layout}:base", "--cache-dir", str(tmp_path / "c")]
    runs = [
        subprocess.Popen(
            [*command, "--", "cat", "/proc/sys/kernel/hostname"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0, 0]
    assert len(set(outputs)) == 4  # each its own container (hostname = container id)
    records = list((state / "mounts").glob("*.json"))
    assert len(records) == 1
    mountpoint = json.loads(records[0].read_text())["mountpoint"]
    mounts = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split(" ")[4] == mountpoint
    ]
    assert len(mounts) == 1


def test_a_killed_service_leaves_mounts_working_and_can_start_again(
    state: Path, base_layout: Path, tmp_path: Path
) -> None:
    pid = json.loads(ketch("service", "start", "--json").stdout)["pid"]
    os.kill(pid, signal.SIGKILL)  # no cleanup: its socket and pid file stay behind
    while Path(f"/proc/{pid}").exists() and _state_of(pid) != "Z":
        time.sleep(0.01)
    assert (state / "service.sock").exists()
    assert ketch("service", "status", check=False).returncode == 3
    # ketch mount finds nobody listening and forks its own daemon.
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    ketch("mount", f"oci:{base_layout}:base", str(mountpoint), "--cache-dir", str(tmp_path / "c"))
    record = read_record(mountpoint)
    assert record is not None and (mountpoint / "etc" / "debian_version").is_file()
    # A new service replaces the stale socket.
    again = json.loads(ketch("service", "start", "--json").stdout)["pid"]
    assert again != pid
    assert json.loads(ketch("service", "status", "--json").stdout)["pid"] == again


def _state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
