"""Bytes a registry stores for Ketch images, against the OCI gzip layers of the same images.

- ``py1``: every Ketch blob + the bootstrap, against the sum of py1's gzip layers.
- ``py2`` over ``py1``: converted with ``--chunk-dict`` py1, only the blobs that conversion
  wrote new + its bootstrap, against py2's layers that py1 does not have (its top layer).
- ``py2`` alone (no chunk dictionary), against all of py2's gzip layers: for context.

Manifests and configs (a few hundred bytes each, on both sides) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.context import Context, log, oci, remove, run_ketch
from bench.report import Benchmark, mib, plural, ratio, table
from ketch.storage.open import open_store


def oci_layers(layout: Path, tag: str) -> dict[str, int]:
    """Digest -> size of an image's layers, from its manifest."""
    store, _ = open_store(oci(layout, tag))
    _, manifest, _ = store.resolve(tag)
    return {layer.digest: layer.size for layer in manifest.layers}


def new_blob_bytes(summary: dict[str, Any], old_blobs: set[str]) -> tuple[int, int]:
    """(bytes, count) of the blobs a conversion wrote that a dictionary image did not have."""
    written = {layer["blob"] for layer in summary["layers"] if layer["blob"]}
    sizes = {blob["digest"]: blob["size"] for blob in summary["blobs"]}
    fresh = written - old_blobs
    return sum(sizes[d] for d in fresh), len(fresh)


def _row(
    image: str, oci_bytes: int, oci_count: int, blob_bytes: int, blobs: int, bootstrap: int
) -> dict[str, Any]:
    ketch = blob_bytes + bootstrap
    return {
        "image": image,
        "oci_bytes": oci_bytes,
        "oci_layers": oci_count,
        "ketch_blob_bytes": blob_bytes,
        "ketch_blobs": blobs,
        "bootstrap_bytes": bootstrap,
        "ketch_bytes": ketch,
        "ratio": round(ketch / oci_bytes, 4),
    }


def run(ctx: Context) -> dict[str, Any]:
    corpus = ctx.corpus
    py1_layers = oci_layers(corpus, "py1")
    py2_layers = oci_layers(corpus, "py2")
    py2_top = {d: s for d, s in py2_layers.items() if d not in py1_layers}

    py1_dest = ctx.fresh_dir("stored-py1")
    py2_dest = ctx.fresh_dir("stored-py2")
    alone_dest = ctx.fresh_dir("stored-py2-alone")
    try:
        log("stored_bytes: converting py1")
        py1 = run_ketch(["convert", oci(corpus, "py1"), oci(py1_dest, "py1")]).summary
        log("stored_bytes: converting py2 with py1 as chunk dict")
        py2 = run_ketch(
            [
                "convert",
                oci(corpus, "py2"),
                oci(py2_dest, "py2"),
                "--chunk-dict",
                oci(py1_dest, "py1"),
            ]
        ).summary
        log("stored_bytes: converting py2 alone")
        alone = run_ketch(["convert", oci(corpus, "py2"), oci(alone_dest, "py2")]).summary
    finally:
        for path in (py1_dest, py2_dest, alone_dest):
            remove(path)

    py1_blobs = {blob["digest"] for blob in py1["blobs"]}
    py2_new, py2_count = new_blob_bytes(py2, py1_blobs)
    rows = [
        _row(
            "py1",
            sum(py1_layers.values()),
            len(py1_layers),
            py1["stored_bytes"],
            len(py1["blobs"]),
            py1["bootstrap_size"],
        ),
        _row(
            "py2 over py1 (`--chunk-dict` py1)",
            sum(py2_top.values()),
            len(py2_top),
            py2_new,
            py2_count,
            py2["bootstrap_size"],
        ),
        _row(
            "py2 alone (no chunk dict)",
            sum(py2_layers.values()),
            len(py2_layers),
            alone["stored_bytes"],
            len(alone["blobs"]),
            alone["bootstrap_size"],
        ),
    ]
    return {
        "rows": rows,
        "file_bytes": {"py1": py1["file_bytes"], "py2": py2["file_bytes"]},
        "py2_reused_chunks": sum(
            layer["chunks"] - layer["stored_chunks"] for layer in py2["layers"]
        ),
        "py2_chunks": sum(layer["chunks"] for layer in py2["layers"]),
    }


def render(data: dict[str, Any]) -> str:
    rows = [
        [
            row["image"],
            f"{mib(row['oci_bytes'])} ({plural(row['oci_layers'], 'layer')})",
            f"{mib(row['ketch_blob_bytes'])} ({plural(row['ketch_blobs'], 'blob')})",
            mib(row["bootstrap_bytes"]),
            f"**{mib(row['ketch_bytes'])}**",
            ratio(row["ratio"]),
        ]
        for row in data["rows"]
    ]
    files = data["file_bytes"]
    return f"""\
Bytes stored, fixed 1 MiB chunks, zstd level 3 (the defaults). Ketch bytes = data blobs +
bootstrap; ratio = Ketch / OCI (below 1 means Ketch stores less). File data: py1
{mib(files["py1"])}, py2 {mib(files["py2"])} (uncompressed). Converting py2 with py1 as
chunk dictionary reused {data["py2_reused_chunks"]:,} of its {data["py2_chunks"]:,} chunks.

{table(["image", "OCI gzip layers", "Ketch blobs", "bootstrap", "Ketch total", "Ketch / OCI"], rows)}

The OCI side of "py2 over py1" is py2's one new layer; the Ketch side is what converting py2
wrote that py1's Ketch image did not already have.
"""


BENCHMARK = Benchmark("stored_bytes", "Stored bytes against OCI gzip layers", run, render)
