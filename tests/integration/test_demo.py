"""``scripts/demo.sh`` (``make demo``): a run on the prebuilt images ends with the side by
side table of py2, every cell filled, both columns measured in that run; and a machine
that cannot run the demo (not root, no ``/dev/fuse``, no ``CAP_SYS_ADMIN``) gets one line
saying what is missing and how to get it, before anything is built or written."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "scripts" / "demo.sh"
DOC = REPO_ROOT / "docs" / "demo.md"
ROWS = (
    "bytes stored (manifest + config + layers)",
    "bytes moved before the container printed its output",
    "time to output from a cold node",
    "files verified",
)
NOISE = ("debconf", "E: Can not write log", "Selecting previously unselected", "Unpacking ")

# A container's /dev as Docker makes it, without the FUSE device: a tmpfs with the usual
# nodes bound in from the real /dev, over /dev, in a mount namespace of its own.
NO_FUSE = """
set -eu
dev=$1; shift
mount -t tmpfs -o mode=755 none "$dev"
for node in null zero full random urandom tty; do
  touch "$dev/$node"; mount --bind "/dev/$node" "$dev/$node"
done
ln -s /proc/self/fd "$dev/fd"
ln -s /proc/self/fd/0 "$dev/stdin"; ln -s /proc/self/fd/1 "$dev/stdout"; ln -s /proc/self/fd/2 "$dev/stderr"
mount --move "$dev" /dev
exec bash "$@"
"""


def _demo(
    args: list[str], work: Path, prefix: tuple[str, ...] = (), timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, "bash", str(DEMO), *args],
        env={**os.environ, "KETCH_DEMO_WORK": str(work)},
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def _table(text: str) -> dict[str, list[str]]:
    """The rows of the last markdown table in ``text``: label -> its other cells."""
    blocks = re.findall(r"(?:^\|.*\|\n)+", text, flags=re.MULTILINE)
    if not blocks:
        pytest.fail(f"expected a table in the output, found none:\n{text[-3000:]}")
    rows = {}
    for line in blocks[-1].splitlines()[2:]:  # header and rule first
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def test_demo_ends_with_the_side_by_side_table_measured_in_that_run(
    test_images_oci: Path, corpus_oci: Path, tmp_path: Path
) -> None:
    work = tmp_path / "demo"
    began = datetime.now(UTC)
    proc = _demo(["--prebuilt"], work)
    finished = datetime.now(UTC)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = _table(proc.stdout)
    assert tuple(rows) == ROWS
    for label, cells in rows.items():
        assert len(cells) == 3, f"{label}: expected OCI, Ketch and ratio cells, found {cells}"
        assert all(cells), f"{label}: an empty cell in {cells}"
    assert re.search(r"at 200 Mbit/s, RTT 4 ms", proc.stdout)
    assert "demo done" in proc.stdout.splitlines()[-1]
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr

    # Both columns come from this run: measured between the start and the end of the demo,
    # and the table shows those measurements.
    data = json.loads((work / "side-by-side.json").read_text())
    for side in ("oci", "ketch"):
        assert began <= _when(data[side]["started"]) <= _when(data[side]["ended"]) <= finished
    time_row = rows["time to output from a cold node"]
    assert time_row[:2] == [f"{data['oci']['seconds']:.2f} s", f"{data['ketch']['seconds']:.2f} s"]
    verified = data["verified"]
    assert rows["files verified"][1].startswith(f"{verified['files']} files")
    assert verified["files"] > 0
    assert verified["chunks"] > 0
    assert verified["failures"] == 0
    # OCI moved its whole image before the container printed; Ketch less than its own image.
    stored = data["stored"]
    assert data["oci"]["moved_bytes"] >= stored["oci"]["layers"]
    assert 0 < data["ketch"]["moved_bytes"] < stored["ketch"]["layers"]
    assert rows["files verified"][0] == f"0 files ({stored['oci']['layer_count']} layer digests)"

    # docs/demo.md shows a capture of this same table.
    assert tuple(_table(DOC.read_text())) == ROWS


def _one_line_missing(proc: subprocess.CompletedProcess[str], what: str, work: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"demo: missing {what}"), lines[0]
    assert proc.stdout == ""
    assert not work.exists(), "the demo wrote its work directory before failing"
    assert lines[0] in DOC.read_text(), "docs/demo.md should quote the line as the demo prints it"


def test_demo_without_dev_fuse_says_so_in_one_line_before_anything(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    dev = tmp_path / "dev"
    dev.mkdir()
    prefix = ("unshare", "--mount", "--propagation", "private", "sh", "-c", NO_FUSE, "sh", str(dev))
    proc = subprocess.run(
        [*prefix, str(DEMO)],
        env={**os.environ, "KETCH_DEMO_WORK": str(work)},
        cwd="/",
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    _one_line_missing(proc, "/dev/fuse", work)
    assert "--device /dev/fuse" in proc.stderr


def test_demo_as_a_user_says_root_in_one_line_before_anything(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all")
    proc = _demo([], work, nobody, timeout=120)
    _one_line_missing(proc, "root", work)
    assert "sudo make demo" in proc.stderr


def test_demo_without_cap_sys_admin_says_so_in_one_line_before_anything(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    no_admin = ("setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin")
    proc = _demo([], work, no_admin, timeout=120)
    _one_line_missing(proc, "CAP_SYS_ADMIN", work)
