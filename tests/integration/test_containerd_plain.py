"""Plain OCI images through real containerd 1.6 with ``ketch`` as its only snapshotter.

containerd pulls the corpus image from the local registry, its differ unpacks each layer
into a snapshot ``ketch snapshotter`` prepared (bind for the bottom layer, overlay above),
and ``ctr run`` starts a container on the overlay of them all.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.containerd import Containerd, containerd_fixture  # noqa: F401 (fixtures)
from tests.fixtures.registry import RunningRegistry, registry_plain_fixture  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plain_image(corpus_oci: Path, registry_plain: RunningRegistry) -> Iterator[str]:
    """The corpus's py1 (3 layers), copied by skopeo to the plain loopback registry."""
    ref = f"{registry_plain.host}/containerd-plain:py1"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{corpus_oci}:py1",
            f"docker://{ref}",
            "--dest-tls-verify=false",
        ],
        check=True,
        capture_output=True,
    )
    yield ref


def _snapshots(containerd: Containerd) -> list[list[str]]:
    out = containerd.ctr("snapshots", "--snapshotter", "ketch", "ls").stdout.splitlines()
    return [line.split() for line in out[1:]]


def test_pull_run_and_gc(containerd: Containerd, plain_image: str) -> None:
    containerd.ctr("images", "pull", "--plain-http", "--snapshotter", "ketch", plain_image)
    committed = _snapshots(containerd)
    # One committed snapshot per layer, each but the bottom one over the one below.
    assert len(committed) == 3, committed
    assert all(row[-1] == "Committed" for row in committed), committed
    parents = {row[0]: row[1] for row in committed}
    bottom = [key for key, parent in parents.items() if parent not in parents]
    assert len(bottom) == 1, parents

    run = containerd.ctr(
        "run",
        "--rm",
        "--snapshotter",
        "ketch",
        plain_image,
        "ketch-plain-1",
        "python3",
        "-c",
        "import sys; print('hello from', sys.version_info[0])",
    )
    assert run.stdout.strip() == "hello from 3"
    # --rm removed the container's active snapshot: only the layers remain.
    assert sorted(map(tuple, _snapshots(containerd))) == sorted(map(tuple, committed))

    top = next(key for key in parents if key not in parents.values())
    info = containerd.ctr("snapshots", "--snapshotter", "ketch", "info", top).stdout
    assert f'"Name": "{top}"' in info
    assert f'"Parent": "{parents[top]}"' in info
    assert '"Kind": "Committed"' in info

    # A parent with a child is refused; the top layer can go.
    refused = containerd.ctr("snapshots", "--snapshotter", "ketch", "rm", parents[top], check=False)
    assert refused.returncode != 0
    assert "failed precondition" in refused.stderr.lower(), refused.stderr

    # The image gone, containerd's GC removes every snapshot it held, through the plugin.
    containerd.ctr("images", "rm", "--sync", plain_image)
    assert _snapshots(containerd) == []
    assert list((containerd.snapshotter_root / "snapshots").iterdir()) == []
