"""Real Debian-based images: Ketch's unpacked tree equals umoci's, skopeo accepts the result,
builds are reproducible, and chunk dictionaries store only what changed."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ketch.cli.main import main
from ketch.image.layout import KETCH_BOOTSTRAP
from tests.treecmp import compare_trees

IMAGES = [
    ("corpus", "base"),
    ("corpus", "py1"),
    ("corpus", "py2"),
    ("own", "demo-base"),
    ("own", "demo-app"),
]


def _ketch_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main([*argv, "--json"]) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


@pytest.fixture
def layouts(corpus_oci: Path, test_images_oci: Path) -> dict[str, Path]:
    return {"corpus": corpus_oci, "own": test_images_oci}


@pytest.mark.parametrize(("source", "tag"), IMAGES)
def test_unpacked_tree_equals_umoci(
    source: str,
    tag: str,
    layouts: dict[str, Path],
    umoci_unpacked: Callable[[Path, str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = layouts[source]
    reference = umoci_unpacked(layout, tag)
    dest = f"oci:{tmp_path / 'ketch'}:{tag}"
    summary = _ketch_json(capsys, "convert", f"oci:{layout}:{tag}", dest)
    assert summary["source_manifest"]
    _ketch_json(capsys, "unpack", dest, str(tmp_path / "tree"))
    differences = compare_trees(reference, tmp_path / "tree")
    assert differences == [], "\n".join(str(d) for d in differences[:20])
    report = _ketch_json(capsys, "check", dest)
    assert report["ok"] is True


def test_skopeo_inspects_and_copies_a_ketch_image(
    corpus_oci: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "ketch"
    _ketch_json(capsys, "convert", f"oci:{corpus_oci}:py1", f"oci:{dest}:py1")
    inspected = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{dest}:py1"], check=True, capture_output=True, text=True
        ).stdout
    )
    assert inspected["Env"] == ["PATH=/usr/local/bin:/usr/bin:/bin"]
    assert len(inspected["Layers"]) >= 2
    raw = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", f"oci:{dest}:py1"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert raw["layers"][-1]["mediaType"] == KETCH_BOOTSTRAP
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci:{dest}:py1", f"oci:{tmp_path / 'copy'}:py1"], check=True
    )
    report = _ketch_json(capsys, "check", f"oci:{tmp_path / 'copy'}:py1")
    assert report["ok"] is True
    config = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci:{tmp_path / 'copy'}:py1"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(config)["config"]["Cmd"] == ["python3", "/app/main.py"]


def test_conversion_is_reproducible_and_base_blob_shared(
    corpus_oci: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _ketch_json(capsys, "convert", f"oci:{corpus_oci}:py2", f"oci:{tmp_path / 'a'}:py2")
    second = _ketch_json(
        capsys, "convert", f"oci:{corpus_oci}:py2", f"oci:{tmp_path / 'b'}:py2", "--workers", "1"
    )
    assert first["manifest_digest"] == second["manifest_digest"]
    # Re-compressing the source differently changes nothing in the Ketch image.
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-compress-format",
            "zstd",
            f"oci:{corpus_oci}:py2",
            f"oci:{tmp_path / 'zstd'}:py2",
        ],
        check=True,
    )
    third = _ketch_json(
        capsys, "convert", f"oci:{tmp_path / 'zstd'}:py2", f"oci:{tmp_path / 'c'}:py2"
    )
    assert third["root_digest"] == first["root_digest"]
    assert third["bootstrap_digest"] == first["bootstrap_digest"]
    assert third["blobs"] == first["blobs"]
    py1 = _ketch_json(capsys, "convert", f"oci:{corpus_oci}:py1", f"oci:{tmp_path / 'a'}:py1")
    assert py1["layers"][0]["blob"] == first["layers"][0]["blob"]  # type: ignore[index]


def test_chunk_dict_stores_only_the_new_version(
    corpus_oci: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ketch_json(capsys, "convert", f"oci:{corpus_oci}:py1", f"oci:{tmp_path / 'v1'}:py1")
    alone = _ketch_json(capsys, "convert", f"oci:{corpus_oci}:py2", f"oci:{tmp_path / 'alone'}:py2")
    with_dict = _ketch_json(
        capsys,
        "convert",
        f"oci:{corpus_oci}:py2",
        f"oci:{tmp_path / 'v2'}:py2",
        "--chunk-dict",
        f"oci:{tmp_path / 'v1'}:py1",
    )
    new_alone = sum(layer["blob_size"] for layer in alone["layers"])  # type: ignore[attr-defined]
    new_with_dict = sum(layer["blob_size"] for layer in with_dict["layers"])  # type: ignore[attr-defined]
    assert new_with_dict < new_alone / 3
    assert [layer["stored_chunks"] for layer in with_dict["layers"]][:3] == [0, 0, 0]  # type: ignore[attr-defined]
    assert with_dict["root_digest"] == alone["root_digest"]
    assert _ketch_json(capsys, "check", f"oci:{tmp_path / 'v2'}:py2")["ok"] is True
    shutil.rmtree(tmp_path / "v1")  # v2 stands alone: borrowed blobs were copied in
    assert _ketch_json(capsys, "check", f"oci:{tmp_path / 'v2'}:py2")["ok"] is True


def test_inspect_reports_the_image(
    corpus_oci: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = f"oci:{tmp_path / 'k'}:py1"
    build = _ketch_json(capsys, "convert", f"oci:{corpus_oci}:py1", dest)
    info = _ketch_json(capsys, "inspect", dest)
    for key in (
        "root_digest",
        "blobs",
        "files",
        "bytes",
        "chunks",
        "unique_chunks",
        "stored_bytes",
    ):
        assert key in info
    assert info["root_digest"] == build["root_digest"]
    assert info["stored_bytes"] == sum(b["size"] for b in info["blobs"])  # type: ignore[attr-defined]
    assert info["unique_chunks"] <= info["chunks"]  # type: ignore[operator]
    entry = _ketch_json(capsys, "inspect", dest, "/app/model.bin")
    assert entry["size"] == 3_000_000
    assert sum(c["size"] for c in entry["chunks"]) == 3_000_000  # type: ignore[attr-defined]
    assert main(["inspect", dest]) == 0
    assert "root digest" in capsys.readouterr().out
