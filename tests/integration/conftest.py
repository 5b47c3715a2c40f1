"""Session fixtures giving integration tests real OCI images.

- ``corpus_oci``: the shared corpus (tags ``base``, ``py1``, ``py2``), built by
  ``$KETCH_SHARED/corpus/build-images.sh`` (default ``../shared`` beside the repository).
- ``test_images_oci``: Ketch's own images (tags ``demo-base``, ``demo-app``), built by
  ``scripts/build-test-images.sh``.
- ``umoci_unpacked``: a factory ``(layout, tag) -> rootfs`` unpacking an image with
  umoci once, the reference result to compare Ketch's own view of an image against.

Everything lives under ``.cache/`` in the repository and is built at most once: builds
and unpacks hold an exclusive ``fcntl.flock`` so pytest-xdist workers wait for each
other instead of building twice. A missing tool or a failed build fails the test; it
never skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.ketch_cli import KETCH

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"
UMOCI_CACHE_DIR = CACHE_DIR / "umoci"
SHARED_DIR = Path(os.environ.get("KETCH_SHARED", REPO_ROOT.parent / "shared"))

CORPUS_TAGS = ("base", "py1", "py2")
TEST_IMAGE_TAGS = ("demo-base", "demo-app")
BUILD_TOOLS = ("debootstrap", "umoci", "skopeo", "setfattr", "tar")
REF_NAME = "org.opencontainers.image.ref.name"
OUTPUT_TAIL_LINES = 40

UnpackImage = Callable[[Path, str], Path]
"""``umoci_unpacked(layout, tag)``: path of the unpacked root filesystem of ``layout:tag``."""


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_file`` (created if needed) for the block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _require_tools(tools: tuple[str, ...], purpose: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{purpose} needs {', '.join(missing)}: expected on PATH, not found; "
            "run scripts/install-system-deps.sh",
            pytrace=False,
        )


def _run(command: list[str], purpose: str) -> None:
    """Run ``command``; on failure fail the test with the tail of its output."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).splitlines()[-OUTPUT_TAIL_LINES:]
        pytest.fail(
            f"{purpose}: `{' '.join(command)}` exited with {result.returncode}, expected 0; "
            "last lines of its output:\n" + "\n".join(output),
            pytrace=False,
        )


def _manifests_by_tag(layout: Path) -> dict[str, str]:
    """Map each tag of the OCI layout ``layout`` to its manifest digest."""
    index = json.loads((layout / "index.json").read_text())
    return {
        manifest["annotations"][REF_NAME]: manifest["digest"]
        for manifest in index.get("manifests", [])
        if REF_NAME in manifest.get("annotations", {})
    }


def _is_complete(layout: Path, tags: tuple[str, ...]) -> bool:
    """Whether ``layout`` exists and has every tag of ``tags`` (a build ran to its end)."""
    if not (layout / "index.json").is_file():
        return False
    try:
        found = _manifests_by_tag(layout)
    except (ValueError, KeyError, TypeError):
        return False
    return all(tag in found for tag in tags)


def _built_layout(script: Path, out_dir: Path, tags: tuple[str, ...]) -> Path:
    """Return ``out_dir/oci``, running ``script out_dir`` first unless it is complete."""
    layout = out_dir / "oci"
    with _exclusive(out_dir.with_name(out_dir.name + ".lock")):
        if _is_complete(layout, tags):
            return layout
        purpose = f"building {layout.relative_to(REPO_ROOT)}"
        if not script.is_file():
            pytest.fail(
                f"{purpose}: expected the script {script}, found no such file", pytrace=False
            )
        _require_tools(BUILD_TOOLS, purpose)
        if os.geteuid() != 0:
            pytest.fail(
                f"{purpose} with {script.name} needs root, running as uid {os.geteuid()}",
                pytrace=False,
            )
        try:
            _run(["bash", str(script), str(out_dir)], purpose)
        finally:
            if not _is_complete(layout, tags):
                shutil.rmtree(layout, ignore_errors=True)
        if not _is_complete(layout, tags):
            pytest.fail(
                f"{purpose}: expected tags {', '.join(tags)} in {layout}, not all found",
                pytrace=False,
            )
    return layout


@pytest.fixture(scope="session")
def corpus_oci() -> Path:
    """OCI layout of the shared corpus images (``base``, ``py1``, ``py2``)."""
    script = SHARED_DIR / "corpus" / "build-images.sh"
    return _built_layout(script, CACHE_DIR / "corpus", CORPUS_TAGS)


@pytest.fixture(scope="session")
def test_images_oci() -> Path:
    """OCI layout of Ketch's own test images (``demo-base``, ``demo-app``)."""
    script = REPO_ROOT / "scripts" / "build-test-images.sh"
    return _built_layout(script, CACHE_DIR / "images", TEST_IMAGE_TAGS)


def _unpack(layout: Path, tag: str) -> Path:
    layout = layout.resolve()
    manifests = _manifests_by_tag(layout)
    if tag not in manifests:
        pytest.fail(f"expected tag {tag!r} in {layout}, found {sorted(manifests)}", pytrace=False)
    key = hashlib.sha256(str(layout).encode()).hexdigest()[:16]
    bundle = UMOCI_CACHE_DIR / f"{key}-{tag}"
    # Written last: the bundle is complete, and is of this very manifest (the layout
    # may have been rebuilt since an earlier session unpacked it).
    marker = UMOCI_CACHE_DIR / f"{key}-{tag}.manifest"
    with _exclusive(UMOCI_CACHE_DIR / f"{key}-{tag}.lock"):
        if marker.is_file() and marker.read_text() == manifests[tag]:
            return bundle / "rootfs"
        _require_tools(("umoci",), f"unpacking {layout}:{tag}")
        marker.unlink(missing_ok=True)
        shutil.rmtree(bundle, ignore_errors=True)
        command = ["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)]
        if os.geteuid() != 0:
            command.insert(2, "--rootless")
        _run(command, f"unpacking {layout}:{tag}")
        marker.write_text(manifests[tag])
    return bundle / "rootfs"


@pytest.fixture(scope="session")
def umoci_unpacked() -> UnpackImage:
    """Factory: ``umoci_unpacked(layout, tag)`` -> root filesystem of that image, unpacked
    by umoci into ``.cache/umoci/<sha256 of the layout path>-<tag>`` (once, then reused)."""
    return _unpack


@pytest.fixture
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test's daemons register under a state dir of its own (``$KETCH_STATE_DIR``);
    every mount left in it is unmounted at the end."""
    state = tmp_path / "state"
    monkeypatch.setenv("KETCH_STATE_DIR", str(state))
    yield state
    for record in (state / "mounts").glob("*.json") if (state / "mounts").exists() else []:
        mountpoint = json.loads(record.read_text())["mountpoint"]
        subprocess.run([*KETCH, "umount", mountpoint], capture_output=True, check=False)
