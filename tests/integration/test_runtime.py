"""Corpus images run with runc on an overlayfs upper over their umoci-unpacked root: output
passes through, exit codes come back, the shared lower is never written, nothing is left
mounted or on disk afterwards."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import KetchError, NotFoundError, UnsupportedError
from ketch.oci.layout import OciLayout
from ketch.runtime.bundle import runtime_spec, write_bundle
from ketch.runtime.container import run_image
from ketch.runtime.overlay import Overlay
from ketch.runtime.runc import new_container_id, run_container

pytestmark = pytest.mark.integration

UnpackImage = Callable[[Path, str], Path]
TIMEOUT = 60.0


def _image_config(layout: Path, tag: str) -> dict[str, Any]:
    oci = OciLayout.open(layout)
    _, manifest, _ = oci.manifest(tag)
    config: dict[str, Any] = json.loads(oci.read_blob(manifest.config.digest))
    return config


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        return [line for line in mounts if str(path) in line]


def _containers(runc_root: Path) -> list[Any]:
    if not runc_root.exists():
        return []
    out = subprocess.run(
        ["runc", "--root", str(runc_root), "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out or "null") or []


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its mode, size and mtime (not atime: reads set it)."""
    tree = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            info = os.lstat(os.path.join(directory, name))
            tree[os.path.join(directory, name)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return tree


def _run(tmp_path: Path, lower: Path, config: dict[str, Any], args: list[str] | None = None) -> int:
    state = tmp_path / "state"
    code = run_image(
        lower,
        config,
        state_dir=state,
        args=args,
        root=tmp_path / "runc",
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )
    assert not state.exists()
    assert _mounts_under(tmp_path) == []
    assert _containers(tmp_path / "runc") == []
    return code


@pytest.mark.parametrize(("tag", "output"), [("py1", '{"ok": true}\n'), ("py2", "3\n")])
def test_default_command_output_passes_through(
    corpus_oci: Path,
    umoci_unpacked: UnpackImage,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    tag: str,
    output: str,
) -> None:
    lower = umoci_unpacked(corpus_oci, tag)
    assert _run(tmp_path, lower, _image_config(corpus_oci, tag)) == 0
    captured = capfd.readouterr()
    assert captured.out == output
    assert captured.err == ""


def test_override_command_returns_its_exit_code(
    corpus_oci: Path, umoci_unpacked: UnpackImage, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lower = umoci_unpacked(corpus_oci, "base")
    config = _image_config(corpus_oci, "base")
    assert _run(tmp_path, lower, config, ["sh", "-c", "echo hi; echo oops >&2; exit 7"]) == 7
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("hi\n", "oops\n")


def test_image_user_and_environment_reach_the_process(
    corpus_oci: Path, umoci_unpacked: UnpackImage, tmp_path: Path
) -> None:
    lower = umoci_unpacked(corpus_oci, "base")
    config = _image_config(corpus_oci, "base")
    config["config"]["User"] = "nobody"
    out = tmp_path / "out"
    with out.open("w") as stdout, Overlay(lower, tmp_path / "overlay") as overlay:
        bundle = tmp_path / "bundle"
        write_bundle(
            bundle, overlay.merged, config, args=["sh", "-c", "id; env | sort"], hostname="kt"
        )
        code = run_container(
            bundle,
            new_container_id(),
            root=tmp_path / "runc",
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            timeout=TIMEOUT,
        )
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"
    assert {"HOSTNAME=kt", "HOME=/nonexistent", "PATH=/usr/local/bin:/usr/bin:/bin"} <= set(lines)


def test_writes_go_to_the_upper_and_the_lower_is_untouched(
    corpus_oci: Path, umoci_unpacked: UnpackImage, tmp_path: Path
) -> None:
    lower = umoci_unpacked(corpus_oci, "base")
    before = _tree(lower)
    script = "echo data > /tmp/ketch-was-here && echo more >> /etc/hostname && rm /etc/issue.net"
    with Overlay(lower, tmp_path / "overlay") as overlay:
        bundle = tmp_path / "bundle"
        write_bundle(
            bundle,
            overlay.merged,
            _image_config(corpus_oci, "base"),
            args=["sh", "-c", script],
            hostname="kt",
        )
        code = run_container(
            bundle,
            new_container_id(),
            root=tmp_path / "runc",
            stdin=subprocess.DEVNULL,
            timeout=TIMEOUT,
        )
        assert code == 0
        assert (overlay.upper / "tmp" / "ketch-was-here").read_text() == "data\n"
        assert (overlay.upper / "etc" / "hostname").read_text().endswith("more\n")
        whiteout = os.lstat(overlay.upper / "etc" / "issue.net")
        assert (os.major(whiteout.st_rdev), os.minor(whiteout.st_rdev)) == (0, 0)
        assert not (overlay.merged / "etc" / "issue.net").exists()
    assert not (lower / "tmp" / "ketch-was-here").exists()
    assert (lower / "etc" / "issue.net").is_file()
    assert _tree(lower) == before
    assert not (tmp_path / "overlay").exists()
    assert _mounts_under(tmp_path) == []


def test_overlay_is_cleaned_up_on_error_and_when_busy(
    corpus_oci: Path, umoci_unpacked: UnpackImage, tmp_path: Path
) -> None:
    lower = umoci_unpacked(corpus_oci, "base")
    with pytest.raises(RuntimeError, match="boom"), Overlay(lower, tmp_path / "a") as overlay:
        assert _mounts_under(overlay.merged) != []
        raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()
    assert _mounts_under(tmp_path) == []
    # A file held open makes umount fail with EBUSY: the unmount is lazy then.
    with Overlay(lower, tmp_path / "b") as overlay:
        held = (overlay.merged / "etc" / "hostname").open()
    held.close()
    assert not (tmp_path / "b").exists()
    assert _mounts_under(tmp_path) == []


def test_overlay_refuses_paths_the_options_would_split(tmp_path: Path) -> None:
    lower = tmp_path / "low,er"
    lower.mkdir()
    with pytest.raises(UnsupportedError, match=r"expected a path without ','"):
        Overlay(lower, tmp_path / "state").mount()
    with pytest.raises(UnsupportedError, match=r"expected a path without ':'"):
        Overlay(tmp_path, tmp_path / "st:ate").mount()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["low,er"]


def test_timeout_kills_and_deletes_the_container(
    corpus_oci: Path, umoci_unpacked: UnpackImage, tmp_path: Path
) -> None:
    lower = umoci_unpacked(corpus_oci, "base")
    with pytest.raises(KetchError, match=r"expected to exit within 1 s.*killed"):
        run_image(
            lower,
            _image_config(corpus_oci, "base"),
            state_dir=tmp_path / "state",
            args=["sleep", "30"],
            root=tmp_path / "runc",
            stdin=subprocess.DEVNULL,
            timeout=1,
        )
    assert not (tmp_path / "state").exists()
    assert _mounts_under(tmp_path) == []
    assert _containers(tmp_path / "runc") == []


def test_runc_failures_are_errors_not_exit_codes(
    corpus_oci: Path, umoci_unpacked: UnpackImage, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lower = umoci_unpacked(corpus_oci, "base")
    config = _image_config(corpus_oci, "base")
    with pytest.raises(KetchError, match=r"runc could not run container .*/no/such/program"):
        _run(tmp_path, lower, config, ["/no/such/program"])
    assert "/no/such/program" in capfd.readouterr().err  # runc said so too
    assert not (tmp_path / "state").exists()
    assert _mounts_under(tmp_path) == []
    with pytest.raises(NotFoundError, match="install runc"):
        run_image(lower, config, state_dir=tmp_path / "state", runc="ketch-no-such-runc", timeout=1)
    assert not (tmp_path / "state").exists()


def test_spec_defaults_match_runc_spec(tmp_path: Path) -> None:
    subprocess.run(["runc", "spec"], cwd=tmp_path, check=True)
    reference = json.loads((tmp_path / "config.json").read_text())
    ours = runtime_spec(tmp_path, {"Cmd": ["true"]}, args=None, hostname="h")
    assert ours["mounts"] == reference["mounts"]
    assert ours["process"]["rlimits"] == reference["process"]["rlimits"]
    assert ours["process"]["capabilities"] == reference["process"]["capabilities"]
    assert ours["linux"]["resources"] == reference["linux"]["resources"]
    for key in ("namespaces", "maskedPaths", "readonlyPaths"):
        assert ours["linux"][key] == reference["linux"][key], key
