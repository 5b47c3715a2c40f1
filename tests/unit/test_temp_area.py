"""Temporaries of killed writers: a later writer removes them; a live writer keeps its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ketch.config import RegistryOptions
from ketch.errors import LocalFileError
from ketch.process_identity import this_process
from ketch.storage.registry.client import RegistryClient
from ketch.storage.registry.store import RegistryStore
from ketch.temp_area import TempArea

_IDENTITY = (
    "import os; pid = os.getpid(); "
    "print(pid, open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()[19])"
)


def _gone_process() -> str:
    """``PID-START`` of a process that has exited."""
    out = subprocess.run(
        [sys.executable, "-c", _IDENTITY], capture_output=True, text=True, check=True
    ).stdout.split()
    return f"{out[0]}-{out[1]}"


def test_own_dir_is_named_by_pid_and_start_time(tmp_path: Path) -> None:
    pid, started = this_process()
    own = TempArea(tmp_path / "area").own_dir()
    assert own == tmp_path / "area" / f"{pid}-{started}"
    assert own.stat().st_mode & 0o777 == 0o700


def test_a_new_writer_removes_a_gone_writers_dir(tmp_path: Path) -> None:
    dead = tmp_path / "area" / _gone_process()
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "spool").write_bytes(b"x" * 4096)
    TempArea(tmp_path / "area").own_dir()
    assert not dead.exists()


def test_registry_spools_go_to_the_node_temp_area(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Registry and S3 destinations spool under $TMPDIR/ketch-tmp/PID-START: a convert
    # killed there leaves files the next one removes.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    area = tmp_path / f"ketch-tmp-{os.geteuid()}"
    area.mkdir(mode=0o700)
    dead = area / _gone_process()
    (dead / "registry-x").mkdir(parents=True)
    store = RegistryStore(RegistryClient("127.0.0.1:1", RegistryOptions()), "repo")
    scratch = store.scratch_dir()
    pid, started = this_process()
    assert scratch.parent == tmp_path / f"ketch-tmp-{os.geteuid()}" / f"{pid}-{started}"
    assert not dead.exists()
    store.close()
    assert not scratch.exists()


def test_a_symlinked_area_is_refused_and_never_walked(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    victim = elsewhere / _gone_process()
    victim.mkdir(parents=True)
    (tmp_path / "area").symlink_to(elsewhere)
    with pytest.raises(LocalFileError, match="temporary area: expected a directory"):
        TempArea(tmp_path / "area").own_dir()
    assert TempArea(tmp_path / "area").remove_stale() == []
    assert victim.is_dir()


def test_a_shared_area_must_be_private(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir(mode=0o777)
    (tmp_path / "shared").chmod(0o777)
    with pytest.raises(LocalFileError, match="with mode 0700"):
        TempArea(tmp_path / "shared", private=True).own_dir()
