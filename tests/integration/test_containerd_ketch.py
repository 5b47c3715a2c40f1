"""A Ketch image through real containerd 1.6: remote snapshots, a lazy FUSE lower, ctr run.

The corpus's py1 is converted, pushed to the loopback registry, pulled into containerd by
``ketch containerd pull`` (lease, content with GC labels, image record, Prepare with labels:
no layer download) and run by stock ``ctr run --snapshotter ketch``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.containerd import Containerd, containerd_fixture  # noqa: F401 (fixtures)
from tests.fixtures.ketch import convert
from tests.fixtures.registry import (  # noqa: F401 (fixtures)
    FaultProxy,
    RunningRegistry,
    registry_plain_fixture,
)
from tests.integration.ketch_cli import ketch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ketch_image(
    corpus_oci: Path, registry_plain: RunningRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int, str]]:
    """py1 converted to Ketch, on the plain registry: its reference and its blobs' size."""
    layout = tmp_path_factory.mktemp("ketch-py1") / "layout"
    summary = convert(corpus_oci, "py1", layout)
    ref = f"{registry_plain.host}/containerd-ketch:py1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{layout}:ketch",
            f"docker://{ref}",
            "--dest-tls-verify=false",
        ],
        check=True,
        capture_output=True,
    )
    yield ref, summary.stored_bytes, summary.bootstrap_digest


def _snapshots(containerd: Containerd) -> list[list[str]]:
    out = containerd.ctr("snapshots", "--snapshotter", "ketch", "ls").stdout.splitlines()
    return [line.split() for line in out[1:]]


def _fuse_mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split() for line in mountinfo]
    return [
        fields[4]
        for fields in points
        if fields[4].startswith(f"{root}/") and "fuse.ketch" in fields[fields.index("-") + 1]
    ]


def test_pull_and_run_ketch_image(
    containerd: Containerd, ketch_image: tuple[str, int, str]
) -> None:
    ref, stored_bytes, _ = ketch_image
    pulled = ketch(
        "containerd",
        "pull",
        f"docker://{ref}",
        "--address",
        str(containerd.address),
        "--json",
    )
    result = json.loads(pulled.stdout)
    assert result["image"] == ref
    chains = result["chain_ids"]
    snaps = {row[0]: row for row in _snapshots(containerd)}
    # Every layer a committed snapshot under its chain ID, each over the one below.
    assert sorted(snaps) == sorted(chains)
    assert all(row[-1] == "Committed" for row in snaps.values())
    assert [snaps[c][1] for c in chains[1:]] == chains[:-1]
    info = json.loads(
        containerd.ctr("snapshots", "--snapshotter", "ketch", "info", chains[-1]).stdout
    )
    assert info["Labels"]["containerd.io/snapshot/ketch.layer"] == "bootstrap"
    assert info["Labels"]["containerd.io/snapshot.ref"] == chains[-1]
    # One lazy FUSE mount: the bootstrap layer's.
    mounts = _fuse_mounts(containerd.snapshotter_root)
    assert len(mounts) == 1, mounts

    run = containerd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        "ketch",
        ref,
        "ketch-lazy-1",
        "python3",
        "-c",
        "import json, sys; print('lazy', sys.version_info[0])",
    )
    assert run.stdout.strip() == "lazy 3"
    # The container started while fetching only part of the image.
    status = json.loads(ketch("status", mounts[0], "--json").stdout)
    fetched = status["metrics"]["ketch_backend_read_bytes_total"]
    assert 0 < fetched < stored_bytes
    # --rm removed the container's snapshot; the layers stay, still mounted.
    assert sorted(row[0] for row in _snapshots(containerd)) == sorted(chains)
    assert _fuse_mounts(containerd.snapshotter_root) == mounts

    # The image gone, GC removes the snapshots, and the FUSE mount and its daemon go too.
    containerd.ctr("images", "rm", "--sync", ref)
    assert _snapshots(containerd) == []
    assert _fuse_mounts(containerd.snapshotter_root) == []
    assert list((containerd.snapshotter_root / "snapshots").iterdir()) == []


def test_pull_of_a_plain_image_is_refused(
    containerd: Containerd, corpus_oci: Path, registry_plain: RunningRegistry
) -> None:
    ref = f"{registry_plain.host}/containerd-notketch:base"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{corpus_oci}:base",
            f"docker://{ref}",
            "--dest-tls-verify=false",
        ],
        check=True,
        capture_output=True,
    )
    result = ketch("containerd", "pull", ref, "--address", str(containerd.address), check=False)
    assert result.returncode == 3, result.stderr
    assert "not a Ketch image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _snapshots(containerd) == []


def test_unreachable_blobs_fail_the_pull_in_bounded_time(
    containerd: Containerd, ketch_image: tuple[str, int, str], registry_plain: RunningRegistry
) -> None:
    ref, _, bootstrap = ketch_image
    repo_tag = ref.removeprefix(f"{registry_plain.host}/")
    with FaultProxy(registry_plain.host) as proxy:
        # The manifest and config come through; every read of the bootstrap gets a 503.
        proxy.plan(["503"] * 1000, match=lambda method, path: bootstrap in path)
        started = time.monotonic()
        result = ketch(
            "containerd",
            "pull",
            f"docker://{proxy.host}/{repo_tag}",
            "--address",
            str(containerd.address),
            check=False,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 7, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    # The image, the digest and the cause, as ctr and CRI show it.
    assert f"{proxy.host}/{repo_tag}" in lines[0]
    assert bootstrap in lines[0]
    assert "503" in lines[0]
    assert elapsed < 180
    # Nothing left: no image, no snapshot, no mount.
    assert repo_tag not in containerd.ctr("images", "ls", "-q").stdout
    assert _snapshots(containerd) == []
    assert _fuse_mounts(containerd.snapshotter_root) == []


def _exec(containerd: Containerd, container: str, *command: str) -> str:
    """Run ``command`` in ``container``; retried while containerd reconnects."""
    deadline = time.monotonic() + 60
    while True:
        done = containerd.ctr(
            "task",
            "exec",
            "--exec-id",
            f"e{time.monotonic_ns()}",
            container,
            *command,
            check=False,
        )
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _remove_container(containerd: Containerd, container: str) -> None:
    containerd.ctr("task", "kill", "-s", "KILL", container, check=False)
    deadline = time.monotonic() + 30
    while containerd.ctr("task", "rm", container, check=False).returncode != 0:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    containerd.ctr("containers", "rm", container, check=False)


def test_snapshotter_kill_9_keeps_running_containers(
    containerd: Containerd, ketch_image: tuple[str, int, str]
) -> None:
    ref, _, _ = ketch_image
    ketch("containerd", "pull", ref, "--address", str(containerd.address))
    containerd.ctr("run", "-d", "--snapshotter", "ketch", ref, "ketch-long", "sleep", "600")
    try:
        mounts = _fuse_mounts(containerd.snapshotter_root)
        containerd.kill_snapshotter()
        # The FUSE daemon is a process of its own: the container reads its image on.
        assert _exec(containerd, "ketch-long", "python3", "-c", "print('alone')") == "alone\n"
        containerd.start_snapshotter()
        containerd.wait_snapshotter_reachable()
        assert _fuse_mounts(containerd.snapshotter_root) == mounts
        assert _exec(containerd, "ketch-long", "python3", "-c", "print('again')") == "again\n"
        # containerd reaches the restarted snapshotter: a second container starts.
        run = containerd.ctr(
            "run",
            "--rm",
            "--snapshotter",
            "ketch",
            ref,
            "ketch-second",
            "python3",
            "-c",
            "print('second')",
        )
        assert run.stdout.strip() == "second"
    finally:
        _remove_container(containerd, "ketch-long")
    containerd.ctr("images", "rm", "--sync", ref)
    assert _fuse_mounts(containerd.snapshotter_root) == []


def test_snapshotter_start_reconciles_mounts(
    containerd: Containerd, ketch_image: tuple[str, int, str]
) -> None:
    ref, _, _ = ketch_image
    ketch("containerd", "pull", ref, "--address", str(containerd.address))
    (mount,) = _fuse_mounts(containerd.snapshotter_root)
    containerd.kill_snapshotter()
    # While it is down: its mount is lost, and a stray Ketch mount appears under its root.
    ketch("umount", mount)
    stray = containerd.snapshotter_root / "snapshots" / "999999" / "fs"
    stray.mkdir(parents=True)
    ketch("mount", f"docker://{ref}", str(stray), "--cache-dir", str(containerd.cache_dir))
    assert _fuse_mounts(containerd.snapshotter_root) == [str(stray)]

    containerd.start_snapshotter()
    containerd.wait_snapshotter_reachable()
    # The snapshot's mount is back, the stray one gone; and the image runs.
    assert _fuse_mounts(containerd.snapshotter_root) == [mount]
    run = containerd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        "ketch",
        ref,
        "ketch-reconciled",
        "python3",
        "-c",
        "print('reconciled')",
    )
    assert run.stdout.strip() == "reconciled"
    containerd.ctr("images", "rm", "--sync", ref)
    assert _fuse_mounts(containerd.snapshotter_root) == []


def test_ketch_and_plain_images_side_by_side(
    containerd: Containerd,
    ketch_image: tuple[str, int, str],
    corpus_oci: Path,
    registry_plain: RunningRegistry,
) -> None:
    ketch_ref, _, _ = ketch_image
    plain_ref = f"{registry_plain.host}/containerd-mixed:py1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{corpus_oci}:py1",
            f"docker://{plain_ref}",
            "--dest-tls-verify=false",
        ],
        check=True,
        capture_output=True,
    )
    ketch("containerd", "pull", ketch_ref, "--address", str(containerd.address))
    containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "ketch", plain_ref)
    containerd.ctr("run", "-d", "--snapshotter", "ketch", ketch_ref, "mixed-ketch", "sleep", "600")
    containerd.ctr("run", "-d", "--snapshotter", "ketch", plain_ref, "mixed-plain", "sleep", "600")
    try:
        script = "import os; print(sorted(os.listdir('/app'))[:1])"
        assert _exec(containerd, "mixed-ketch", "python3", "-c", script) == _exec(
            containerd, "mixed-plain", "python3", "-c", script
        )
        # containerd restarted: no snapshot lost, both containers still answer.
        before = sorted(map(tuple, _snapshots(containerd)))
        containerd.restart_containerd()
        assert sorted(map(tuple, _snapshots(containerd))) == before
        assert _exec(containerd, "mixed-ketch", "true") == ""
        assert _exec(containerd, "mixed-plain", "true") == ""
    finally:
        _remove_container(containerd, "mixed-ketch")
        _remove_container(containerd, "mixed-plain")
    containerd.ctr("images", "rm", "--sync", ketch_ref, plain_ref)
    assert _snapshots(containerd) == []
    assert _fuse_mounts(containerd.snapshotter_root) == []
