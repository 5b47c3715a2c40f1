"""The closing table of ``make demo``: the corpus image ``py2`` started once on a cold node
the OCI way and once the Ketch way, through the link emulator, measured in this run.

    python -m bench.side_by_side table --work DIR [--corpus LAYOUT] [--json FILE]
    python -m bench.side_by_side compare OCI_IMAGE KETCH_IMAGE

Setup (not timed), from ``bench.cold_start``: a ``docker-registry`` on loopback behind the
link emulator of ``bench/link.py`` (200 Mbit/s, RTT 4 ms); ``skopeo copy`` of the corpus
layout's ``py2`` into it and ``ketch convert`` of the same layout to it, not through the
link. Each side then starts on a cold node (page cache dropped, the registry's blobs read
back as a remote server would have them, an empty Ketch chunk cache and state, nothing
pulled or unpacked) and pulls through the link:

- **OCI**: ``skopeo copy`` to a local layout, ``umoci unpack``, ``runc run``.
- **Ketch**: ``ketch run docker://LINK/ketch:py2`` with an empty ``--cache-dir``, the node
  service (``ketch service start``) running, as in ``bench.cold_start``; afterwards
  ``ketch status`` of the mount it left gives the files read and the chunks verified.

Each side is timed from its first command until the container's output reaches this
process, and the link's byte counters (payload, both ways) are read at that moment.
"Bytes stored" is one definition for both: the manifest, the config and every layer the
manifest names (for Ketch the data blobs and the bootstrap), as the registry holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cold_start import (
    CONTAINER_PREFIX,
    Node,
    check_output,
    ketch_env,
    ketch_run_command,
    no_terminal,
    oci_pull,
    oci_unpack,
    run_command,
    runc_command,
    started_node,
)
from bench.context import CORPUS, REPO, BenchError, Context, ketch_command, oci, remove
from bench.link import Counters
from bench.mounts import node_service, umount
from bench.report import prose
from ketch.errors import KetchError
from ketch.storage.open import open_store

TAG = "py2"
EXPECTED = "3"  # what py2's command prints
_TIMEOUT = 600


# -- sizes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageBytes:
    """What a store holds for one image: manifest, config and the layers it names."""

    manifest: int
    config: int
    layers: int
    layer_count: int

    @property
    def total(self) -> int:
        return self.manifest + self.config + self.layers


def image_bytes(reference: str) -> ImageBytes:
    """Bytes stored for ``reference`` (``oci:DIR:TAG`` or ``docker://HOST/REPO:TAG``)."""
    store, tag = open_store(reference)
    descriptor, manifest, _ = store.resolve(tag)
    return ImageBytes(
        manifest=descriptor.size,
        config=manifest.config.size,
        layers=sum(layer.size for layer in manifest.layers),
        layer_count=len(manifest.layers),
    )


# -- one cold start -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ColdStart:
    """One side's cold start, until the container's output reached us."""

    seconds: float
    moved_bytes: int
    #: wall-clock start and end (ISO 8601, UTC): when this side was measured
    started: str
    ended: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _until_output(
    node: Node, command: Sequence[str], env: dict[str, str] | None, t0: float, before: Counters
) -> tuple[str, float, Counters]:
    """Run ``command``; its whole output, the seconds from ``t0`` until its first line
    arrived, and the link's traffic from ``before`` until then."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            list(command), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        if proc.stdout is None:
            raise BenchError(f"`{' '.join(command)}`: no stdout pipe")
        first = proc.stdout.readline()
        arrived = time.monotonic()
        moved = node.link.counters() - before
        rest, _ = proc.communicate(timeout=_TIMEOUT)
        if proc.returncode != 0:
            errors.seek(0)
            raise BenchError(
                f"`{' '.join(command)}` exited {proc.returncode}: {errors.read().strip()[-2000:]}"
            )
    return first + rest, arrived - t0, moved


def _oci(node: Node, image: str) -> ColdStart:
    """skopeo copy + umoci unpack + runc run, from an empty layout and no bundle."""
    ctx = node.ctx
    layout = ctx.fresh_dir("cs-oci")
    bundle = ctx.work / "cs-bundle"
    runc_root = ctx.work / "cs-runc"
    runc_root.mkdir(exist_ok=True)
    name = f"{CONTAINER_PREFIX}-demo-oci"
    node.cold(image)
    started = _now()
    before = node.link.counters()
    t0 = time.monotonic()
    oci_pull(node.link, image, layout, TAG)
    oci_unpack(layout, TAG, bundle)
    no_terminal(bundle)
    output, seconds, moved = _until_output(
        node, runc_command(runc_root, bundle, name), None, t0, before
    )
    ended = _now()
    check_output(f"OCI {image}", output, EXPECTED)
    remove(layout)
    remove(bundle)
    return ColdStart(seconds, moved.total_bytes, started, ended)


@dataclass(frozen=True, slots=True)
class Verified:
    """What the Ketch daemon read and verified while the container started."""

    files: int
    chunks: int
    failures: int


def _ketch(node: Node, image: str) -> tuple[ColdStart, Verified]:
    """``ketch run`` with an empty chunk cache and state, the node service up; then the
    daemon's account of what it read, and the unmount."""
    ctx = node.ctx
    cache = ctx.fresh_dir("cs-cache-demo")
    state = ctx.fresh_dir("cs-state-demo")  # cs-state*: Node.sweep cleans it up on failure
    env = ketch_env(state)
    reference = f"docker://{node.link.host}/{image}"
    command = ketch_run_command(reference, cache, f"{CONTAINER_PREFIX}-demo", rm_mount=False)
    with node_service(state):
        node.cold(image)
        started = _now()
        before = node.link.counters()
        t0 = time.monotonic()
        output, seconds, moved = _until_output(node, command, env, t0, before)
        ended = _now()
        check_output(f"ketch run {image}", output, EXPECTED)
        records = sorted((state / "mounts").glob("*.json"))
        if len(records) != 1:
            raise BenchError(
                f"{state}/mounts: expected the one mount ketch run made, found {records}"
            )
        record = json.loads(records[0].read_text())
        mountpoint = Path(record["mountpoint"])
        try:
            status = json.loads(
                run_command([*ketch_command(), "status", str(mountpoint), "--json"], env)
            )
        finally:
            umount(mountpoint, state, int(record["pid"]))
    remove(cache)
    metrics: dict[str, float] = status["metrics"]
    files = [f for f in status["files"] if int(f["bytes_read"]) > 0]
    verified = Verified(
        files=len(files),
        chunks=int(metrics.get("ketch_cache_misses_total", 0)),
        failures=int(metrics.get("ketch_chunk_verify_failures_total", 0)),
    )
    return ColdStart(seconds, moved.total_bytes, started, ended), verified


# -- the table ----------------------------------------------------------------------------


def measure(ctx: Context, corpus: Path) -> dict[str, Any]:
    """Set up, then one cold start of each side; everything the table shows."""
    load = os.getloadavg()[0]
    with started_node(ctx) as node:
        host = node.registry.host
        began = time.monotonic()
        _progress(f"setup (not timed): registry + link, skopeo copy + ketch convert of {TAG} ...")
        run_command(
            [
                "skopeo",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                oci(corpus, TAG),
                f"docker://{host}/corpus:{TAG}",
            ]
        )
        run_command(
            [
                *ketch_command(),
                "convert",
                oci(corpus, TAG),
                f"docker://{host}/ketch:{TAG}",
                "--json",
            ]
        )
        _progress(f"setup: done in {time.monotonic() - began:.0f} s")
        for repo in ("corpus", "ketch"):
            node.remember_blobs(repo, TAG)
        stored = {
            side: image_bytes(f"docker://{host}/{repo}:{TAG}")
            for side, repo in (("oci", "corpus"), ("ketch", "ketch"))
        }
        _progress("OCI: cold node, skopeo copy + umoci unpack + runc run through the link ...")
        oci_run = _oci(node, f"corpus:{TAG}")
        _progress(f"OCI: output after {oci_run.seconds:.2f} s")
        _progress("Ketch: cold node, ketch run through the link ...")
        ketch_run, verified = _ketch(node, f"ketch:{TAG}")
        _progress(f"Ketch: output after {ketch_run.seconds:.2f} s")
        link = {"bandwidth_mbit": node.link.bandwidth / 1e6, "rtt_ms": node.link.rtt * 1000}
        dropped = node.caches.drop_caches
    return {
        "image": TAG,
        "link": link,
        "page_cache_dropped": dropped,
        "load_average": round(load, 1),
        "cores": len(os.sched_getaffinity(0)),
        "stored": {side: asdict(value) for side, value in stored.items()},
        "oci": asdict(oci_run),
        "ketch": asdict(ketch_run),
        "verified": asdict(verified),
    }


def stored_line(oci_: ImageBytes, ketch: ImageBytes) -> str:
    """One image's bytes stored, OCI against Ketch, saying what is counted."""
    return (
        f"bytes stored (manifest + config + layers): OCI {_mb(oci_.total)} in "
        f"{oci_.layer_count} tar+gzip layers, Ketch {_mb(ketch.total)} in "
        f"{ketch.layer_count - 1} data blobs + bootstrap: {_x(ketch.total, oci_.total)}"
    )


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def _x(ketch: float, oci_: float) -> str:
    return f"{ketch / oci_:.2f}x" if oci_ else "n/a"


def render(data: dict[str, Any]) -> str:
    """The table as the demo prints it (and docs/demo.md shows it)."""
    link = data["link"]
    stored = {side: ImageBytes(**data["stored"][side]) for side in ("oci", "ketch")}
    oci_, ketch = data["oci"], data["ketch"]
    verified = data["verified"]
    layers = stored["oci"].layer_count
    rows = [
        (
            "bytes stored (manifest + config + layers)",
            _mb(stored["oci"].total),
            _mb(stored["ketch"].total),
            _x(stored["ketch"].total, stored["oci"].total),
        ),
        (
            "bytes moved before the container printed its output",
            _mb(oci_["moved_bytes"]),
            _mb(ketch["moved_bytes"]),
            _x(ketch["moved_bytes"], oci_["moved_bytes"]),
        ),
        (
            "time to output from a cold node",
            f"{oci_['seconds']:.2f} s",
            f"{ketch['seconds']:.2f} s",
            _x(ketch["seconds"], oci_["seconds"]),
        ),
        (
            "files verified",
            f"0 files ({layers} layer digests)",
            f"{verified['files']} files as read ({verified['chunks']} chunks)",
            "n/a",
        ),
    ]
    headers = ("", "OCI", "Ketch", "Ketch / OCI")
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    speed = f"{link['bandwidth_mbit']:g} Mbit/s, RTT {link['rtt_ms']:g} ms"
    table = "\n".join([line(headers), rule, *(line(row) for row in rows)])
    failures = verified["failures"]
    cold = (
        "page cache dropped"
        if data["page_cache_dropped"]
        else "page cache kept: /proc/sys/vm/drop_caches refused here"
    )
    notes = f"""\
Both sides pull from a docker-registry on loopback through the link, on a cold node ({cold},
nothing pulled, unpacked or cached), timed from their first command until the container's
output arrived. Bytes stored: what the registry holds for the image (for Ketch, the data blobs
and the bootstrap are its layers). Bytes moved: payload, both ways.

OCI: skopeo copy to a layout, umoci unpack, runc run. skopeo checks each layer's digest as it
copies; no file is checked.

Ketch: ketch run (node service up, empty chunk cache) mounts the image with FUSE and fetches
chunks as they are read, each verified on arrival ({failures} failures): the files counted are
those read while the container started. `ketch check` verifies every file.
"""
    heading = (
        f"{data['image']} on a cold node, through the link emulator at {speed}, "
        "one run each,\nmeasured now"
        f" (load average {data['load_average']:g} on {data['cores']} cores at the start):"
    )
    return f"{heading}\n\n{table}\n\n{prose(notes, width=96)}"


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# -- command line -------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="measure both sides and print the table")
    table.add_argument("--work", type=Path, required=True, help="work directory (emptied)")
    table.add_argument("--corpus", type=Path, default=CORPUS, help="the corpus OCI layout")
    table.add_argument("--json", type=Path, help="also write the measurements here")
    compare = sub.add_parser(
        "compare",
        help="bytes stored for an OCI image and its Ketch conversion, as the table counts",
    )
    compare.add_argument("oci_image", metavar="OCI_IMAGE")
    compare.add_argument("ketch_image", metavar="KETCH_IMAGE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if args.command == "compare":
            print(stored_line(image_bytes(args.oci_image), image_bytes(args.ketch_image)))
            return 0
        remove(args.work)
        args.work.mkdir(parents=True)
        ctx = Context(work=args.work, quick=True)
        if not (args.corpus / "index.json").is_file():
            raise BenchError(f"{args.corpus}: expected the corpus OCI layout, found none")
        data = measure(ctx, args.corpus)
        if args.json is not None:
            args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(render(data), end="")
    except KetchError as exc:
        print(f"side_by_side: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BenchError as exc:
        print(f"side_by_side: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
