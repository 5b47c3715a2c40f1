"""Local paths: OS errors map to exit 8 naming the path; what the daemon leaves on the node
(cache directory, logs, sockets) is private to root and cleaned up."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from ketch.daemon.state import read_record
from tests.fixtures import ocilayout as ol
from tests.integration.ketch_cli import ketch


@pytest.fixture(scope="module")
def small_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local-files")
    files = [ol.file("big", os.urandom(3 << 20)), ol.file("etc/hello", b"hello\n")]
    ol.write_oci_layout(root / "src", "t", [ol.tar_bytes(files)])
    ketch("convert", f"oci:{root / 'src'}:t", f"oci:{root / 'k'}:t")
    return root / "k"


pytestmark = pytest.mark.usefixtures("private_state")


def _fails_with_8(result: subprocess.CompletedProcess[str], path: str) -> None:
    assert result.returncode == 8, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"ketch: error: {path}: "), result.stderr


def test_unpack_to_a_path_that_cannot_be_made(small_image: Path) -> None:
    result = ketch("unpack", f"oci:{small_image}:t", "/proc/nope", check=False)
    _fails_with_8(result, "/proc/nope")


def test_convert_to_a_layout_that_cannot_be_made(small_image: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    ol.write_oci_layout(source, "t", [ol.tar_bytes([ol.file("a", b"a")])])
    result = ketch("convert", f"oci:{source}:t", "oci:/proc/self/t:t", check=False)
    _fails_with_8(result, "/proc/self/t")


def test_a_file_as_the_cache_dir(small_image: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    (tmp_path / "mnt").mkdir()
    for cache in (a_file, a_file / "below"):
        result = ketch(
            "mount", f"oci:{small_image}:t", str(tmp_path / "mnt"), "--cache-dir", str(cache),
            check=False,
        )  # fmt: skip
        _fails_with_8(result, str(cache))


def test_the_daemon_reports_a_cache_dir_it_cannot_make(small_image: Path, tmp_path: Path) -> None:
    # The command line finds nothing wrong (the path does not exist yet); the daemon's
    # mkdir fails, and its error comes back as the command's, exit 8, not "exited with 70".
    (tmp_path / "mnt").mkdir()
    cache = "/proc/self/ketch-cache"
    result = ketch(
        "mount", f"oci:{small_image}:t", str(tmp_path / "mnt"), "--cache-dir", cache, check=False
    )
    _fails_with_8(result, cache)


def test_cache_dir_and_logs_are_private_and_a_killed_daemons_socket_goes_at_umount(
    small_image: Path, tmp_path: Path, private_state: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    ketch("mount", f"oci:{small_image}:t", str(mountpoint), "--cache-dir", str(cache))
    assert (mountpoint / "etc" / "hello").read_bytes() == b"hello\n"
    record = read_record(mountpoint)
    assert record is not None
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(record.log_file).stat().st_mode) == 0o600
    socket = Path(record.api_sock)
    assert stat.S_ISSOCK(socket.stat().st_mode)
    os.kill(record.pid, signal.SIGKILL)
    ketch("umount", str(mountpoint))
    assert not socket.exists()


def test_an_open_cache_dir_is_closed(small_image: Path, tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    cache.chmod(0o755)
    ketch("mount", f"oci:{small_image}:t", str(mountpoint), "--cache-dir", str(cache))
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    ketch("umount", str(mountpoint))
