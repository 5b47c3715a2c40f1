"""Cold start through an emulated link: Ketch's lazy ``ketch run`` against OCI's pull,
unpack and run, for the corpus images ``py1`` and ``py2``.

Setup (not timed): a ``docker-registry`` on loopback (``scripts/registry.py``) with the
link emulator of ``bench/link.py`` in front of it (bandwidth per direction, ``RTT/2`` of
delay each way, one RTT for each new connection's handshake). The corpus images are
pushed with ``skopeo copy`` and converted with ``ketch convert docker://... docker://...``
straight to the registry, not through the link. The link is checked against its settings
with a bulk blob download and small requests (the calibration line).

Every measured run starts on a cold node: a new, empty ``ketch`` cache directory, a
fresh ``KETCH_STATE_DIR``, an empty skopeo destination, ``sync; echo 3 >
/proc/sys/vm/drop_caches``, and then the registry's blob files of the image about to be
pulled are read back into the page cache (the registry stands for a remote server, whose
caches this node's cold start does not empty). All pulls go through the link, and its
byte counters are read before and after each run.

- **OCI**: ``skopeo copy docker://LINK/corpus:TAG oci:DIR:TAG``, ``umoci unpack`` into a
  bundle (``process.terminal`` set to false in its ``config.json``), ``runc run`` of the
  image's own command: seconds per phase.
- **Ketch**: ``ketch run docker://LINK/ketch:TAG --cache-dir EMPTY --rm-mount``, the image's
  own command: one number, the whole cold start (it includes the unmount at the end).
- **Ketch, split** (an extra run, same cold state): ``ketch mount`` timed alone (manifest
  and bootstrap pull, daemon start, FUSE ready: it returns when the mount answers), then
  ``ketch run`` of the same image, which finds the live mount and reuses it (lazy reads,
  overlay, runc); with the mount still up, ``ketch status --json`` gives the daemon's
  metrics and access trace (read amplification), then ``ketch umount`` (timed apart).

The container's output is checked in every run (``py1`` prints ``{"ok": true}``, ``py2``
prints ``3``). Median of 3 runs (1 with ``--quick``) per image, at 200 Mbit/s and 1 Gbit/s,
RTT 4 ms; the order of the kinds of run rotates from one repeat to the next.

- **Ketch, traced image**: the same ``ketch run`` of ``ketch:TAG-traced``, converted in the
  setup with ``--prefetch-list``: the files the image's command read in one run on a mount
  straight from the registry (``ketch status --paths``), in first-access order. The
  bootstrap's prefetch table makes the daemon fetch them first, as planned range reads.

Every Ketch run has the node service running (``ketch service start`` in its fresh state
directory, before the cache drop), as a node runs its container services before any
container starts: the daemon is forked from it, and resolves the image itself.

The start-up floor: ``import ketch.cli.main, ketch.daemon.mount_daemon`` in a fresh interpreter
right after a cache drop, and again warm (what a node without the service pays per mount).

The startup profile comes from the split runs: the link's timeline of HTTP exchanges
(when each request left the client, when its response's last byte reached it), the
daemon's access trace (``first_access_ms`` of each file, placed on the same clock by the
first chunk fetch, which ``ketch run``'s own read of ``/etc/passwd`` causes; the daemon
log's ``mounted`` line is a cross-check) and the wall clock around each command.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scripts.registry import RegistryServer, RunningRegistry

from bench.context import REPO, BenchError, Context, ketch_command, log, oci, remove
from bench.link import Counters, Exchange, Link
from bench.mounts import (
    CacheControl,
    check_drop_caches,
    mount,
    node_service,
    read_file,
    umount,
)
from bench.report import Benchmark, mib, table

IMAGES: tuple[tuple[str, str], ...] = (("py1", '{"ok": true}'), ("py2", "3"))
BANDWIDTHS: tuple[float, ...] = (200e6, 1e9)
RTT = 0.004
TARGET_RATIO = 0.25
TARGET_AMPLIFICATION = 2.0
CHART = REPO / "docs" / "img" / "cold_start.png"
CALIBRATION_BLOB = "sha256:93d376f3fa105b989a6d49feaa6c932220060c85ac52be538bc21b3a61b26106"
_TIMEOUT = 600
_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
_OWN_READS = frozenset({"/etc/passwd", "/etc/group"})  # ketch run's User lookup
CONTAINER_PREFIX = "ketch-bench-cs"
DAEMON_IMPORTS = "import ketch.cli.main, ketch.daemon.mount_daemon"
SMALL_FETCH = 64 << 10
MERGE_GAPS: tuple[int, ...] = (0, 64 << 10, 256 << 10, 1 << 20, 4 << 20)

#: the startup profile's segments, in order: key, label
SEGMENTS: tuple[tuple[str, str], ...] = (
    ("mount_startup", "mount: CLI + daemon start until the first request"),
    ("mount_pull", "mount: manifest + bootstrap over the link"),
    ("mount_ready", "mount: bootstrap check, FUSE init, until ready"),
    ("run_startup", "run: CLI start until the first request"),
    ("run_resolve", "run: manifest + config over the link"),
    ("container_setup", "run: overlay, bundle, runc until the container's first read"),
    ("workload", "run: the workload, until its last new file is read"),
    ("exit", "run: after the last new file until `ketch run` returns"),
)


# -- commands -----------------------------------------------------------------------------


def run_command(command: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout (a failure is a BenchError with stderr)."""
    proc = subprocess.run(
        list(command),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    if proc.returncode != 0:
        raise BenchError(
            f"`{' '.join(command)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


def ketch_env(state: Path) -> dict[str, str]:
    return {**os.environ, "KETCH_STATE_DIR": str(state)}


def check_output(what: str, output: str, expected: str) -> None:
    if output.strip() != expected:
        raise BenchError(f"{what}: expected the output {expected!r}, found {output.strip()!r}")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- the node: registry, link, cold caches, cleanup --------------------------------------


def _manifest_blobs(registry: RunningRegistry, repo: str, tag: str) -> list[str]:
    """Digests of the manifest, config and layers of ``repo:tag``, asked of the registry
    directly (not through the link)."""
    host, port = registry.host.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": _ACCEPT})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise BenchError(f"{repo}:{tag}: expected a manifest, the registry said {response.status}")
    manifest = json.loads(body)
    digests = [f"sha256:{hashlib.sha256(body).hexdigest()}", manifest["config"]["digest"]]
    digests += [layer["digest"] for layer in manifest["layers"]]
    return digests


@dataclass(slots=True)
class Node:
    """The machine under test: its registry, link, caches, and where work files go."""

    ctx: Context
    registry: RunningRegistry
    link: Link
    caches: CacheControl
    #: registry blob files of each ``repo:tag``, read back after each cache drop
    blob_files: dict[str, list[Path]]

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return (
            self.registry.root
            / "storage/docker/registry/v2/blobs"
            / algorithm
            / hexdigest[:2]
            / hexdigest
            / "data"
        )

    def remember_blobs(self, repo: str, tag: str) -> None:
        paths = [self.blob_path(d) for d in _manifest_blobs(self.registry, repo, tag)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise BenchError(f"{repo}:{tag}: registry blob files missing: {missing[0]}")
        self.blob_files[f"{repo}:{tag}"] = paths

    def cold(self, image: str) -> None:
        """Drop the page cache, then warm the registry's blob files of ``image``."""
        self.caches.cold()
        for path in self.blob_files[image]:
            read_file(path)

    def sweep(self) -> None:
        """Unmount whatever is still mounted under the work directory (deepest first),
        stop the daemons recorded there, delete leftover containers."""
        work = str(self.ctx.work.absolute())
        pids = []
        for record in self.ctx.work.glob("cs-state*/mounts/*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.append(int(json.loads(record.read_text())["pid"]))
        targets = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split(" ")
            target = fields[4].encode().decode("unicode_escape")
            if target == work or target.startswith(work + "/"):
                targets.append((target, fields[fields.index("-") + 1]))
        for target, kind in sorted(targets, key=lambda t: -len(t[0])):
            log(f"cold_start: cleaning up a leftover {kind} mount at {target}")
            command = ["fusermount3", "-uz", target] if kind.startswith("fuse") else []
            subprocess.run(command or ["umount", "-l", target], check=False, timeout=60)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for root in (None, self.ctx.work / "cs-runc"):
            prefix = ["runc"] if root is None else ["runc", "--root", str(root)]
            listed = subprocess.run(
                [*prefix, "list", "-q"], capture_output=True, text=True, check=False, timeout=60
            )
            for name in listed.stdout.split():
                if name.startswith(CONTAINER_PREFIX):
                    subprocess.run([*prefix, "delete", "-f", name], check=False, timeout=60)


@contextlib.contextmanager
def started_node(ctx: Context) -> Iterator[Node]:
    """Registry and link for the ``with`` block; both stopped, and everything under the
    work directory unmounted, when it ends."""
    probe = ctx.work / "cs-probe"
    with probe.open("wb") as f:
        f.write(os.urandom(4 << 20))
    caches = check_drop_caches(probe)
    probe.unlink()
    server = RegistryServer("plain", ctx.fresh_dir("cs-registry"))
    link: Link | None = None
    node: Node | None = None
    try:
        registry = server.start()
        link = Link("127.0.0.1", int(registry.host.rsplit(":", 1)[1])).start()
        node = Node(ctx, registry, link, caches, {})
        yield node
    finally:
        if node is not None:
            node.sweep()
        if link is not None:
            link.stop()
        server.stop()
        remove(ctx.work / "cs-registry")


# -- setup: push, convert, calibrate ----------------------------------------------------


def _push_and_convert(node: Node) -> dict[str, Any]:
    host = node.registry.host
    images: dict[str, Any] = {}
    started = time.monotonic()
    for tag, _ in IMAGES:
        run_command(
            [
                "skopeo",
                "copy",
                "-q",
                "--dest-tls-verify=false",
                oci(node.ctx.corpus, tag),
                f"docker://{host}/corpus:{tag}",
            ]
        )
    pushed = time.monotonic()
    for tag, expected in IMAGES:
        began = time.monotonic()
        summary = json.loads(
            run_command(
                [
                    *ketch_command(),
                    "convert",
                    f"docker://{host}/corpus:{tag}",
                    f"docker://{host}/ketch:{tag}",
                    "--json",
                ]
            )
        )
        node.remember_blobs("corpus", tag)
        node.remember_blobs("ketch", tag)
        trace = _record_trace(node, tag, expected)
        run_command(
            [
                *ketch_command(),
                "convert",
                f"docker://{host}/corpus:{tag}",
                f"docker://{host}/ketch:{tag}-traced",
                "--prefetch-list",
                str(trace),
            ]
        )
        node.remember_blobs("ketch", f"{tag}-traced")
        oci_bytes = sum(p.stat().st_size for p in node.blob_files[f"corpus:{tag}"])
        images[tag] = {
            "oci_bytes": oci_bytes,
            "ketch_stored_bytes": summary["stored_bytes"],
            "bootstrap_bytes": summary["bootstrap_size"],
            "file_bytes": summary["file_bytes"],
            "convert_s": round(time.monotonic() - began, 2),
        }
    return {
        "images": images,
        "push_s": round(pushed - started, 2),
        "convert_s": round(time.monotonic() - pushed, 2),
    }


def _record_trace(node: Node, tag: str, expected: str) -> Path:
    """The files ``ketch:TAG``'s command reads, in first-access order (``ketch status
    --paths`` after one run on a mount straight from the registry, not through the link):
    the prefetch list that ``ketch:TAG-traced`` carries in its bootstrap."""
    ctx = node.ctx
    state = ctx.fresh_dir("cs-state-trace")
    cache = ctx.fresh_dir("cs-cache-trace")
    mountpoint = ctx.fresh_dir("cs-mnt-trace")
    image = f"docker://{node.registry.host}/ketch:{tag}"
    mounted = mount(image, mountpoint, cache, state)
    try:
        command = [*ketch_command(), "run", image, "--cache-dir", str(cache)]
        output = run_command([*command, "--name", f"{CONTAINER_PREFIX}-trace"], ketch_env(state))
        check_output(f"ketch run {tag} (trace)", output, expected)
        paths = run_command(
            [*ketch_command(), "status", str(mountpoint), "--paths"], ketch_env(state)
        )
    finally:
        umount(mountpoint, state, mounted.pid)
    path = ctx.work / f"cs-trace-{tag}.list"
    path.write_text(f"# {tag}: files its command reads, in first-access order\n{paths}")
    for leftover in (state, cache, mountpoint):
        remove(leftover)
    return path


def _get(connection: http.client.HTTPConnection, path: str) -> int:
    connection.request("GET", path)
    response = connection.getresponse()
    total = 0
    while block := response.read(1 << 20):
        total += len(block)
    if response.status != 200:
        raise BenchError(f"calibration: GET {path} answered {response.status}")
    return total


def _ranged(connection: http.client.HTTPConnection) -> float:
    """Median ms of 10 ranged GETs of 16 KiB at spread offsets of the calibration blob."""
    times = []
    for i in range(10):
        start = i * (1 << 20)
        started = time.monotonic()
        connection.request(
            "GET",
            f"/v2/corpus/blobs/{CALIBRATION_BLOB}",
            headers={"Range": f"bytes={start}-{start + (16 << 10) - 1}"},
        )
        response = connection.getresponse()
        response.read()
        times.append(time.monotonic() - started)
        if response.status != 206:
            raise BenchError(f"calibration: a ranged GET answered {response.status}")
    return _median(times) * 1000


def _calibrate(node: Node) -> dict[str, float]:
    """What the link really gives: a bulk download, and small requests (median of 10)
    through it and straight to the registry."""
    link, registry = node.link, node.registry
    host, port = registry.host.split(":")

    def small(connection: http.client.HTTPConnection) -> float:
        times = []
        for _ in range(10):
            started = time.monotonic()
            _get(connection, "/v2/")
            times.append(time.monotonic() - started)
        return _median(times) * 1000

    direct = http.client.HTTPConnection(host, int(port), timeout=60)
    through = http.client.HTTPConnection("127.0.0.1", link.port, timeout=60)
    try:
        started = time.monotonic()
        _get(through, "/v2/")  # a new connection: handshake + one exchange
        first_ms = (time.monotonic() - started) * 1000
        small_ms = small(through)
        _get(direct, "/v2/")
        direct_ms = small(direct)
        range_ms = _ranged(through)
        direct_range_ms = _ranged(direct)
        started = time.monotonic()
        nbytes = _get(through, f"/v2/corpus/blobs/{CALIBRATION_BLOB}")
        bulk_s = time.monotonic() - started
    finally:
        direct.close()
        through.close()
    return {
        "bandwidth_mbit": round(link.bandwidth / 1e6),
        "rtt_ms": round(link.rtt * 1000, 1),
        "measured_mbit": round(nbytes * 8 / bulk_s / 1e6, 1),
        "bulk_bytes": nbytes,
        "first_request_ms": round(first_ms, 2),
        "request_ms": round(small_ms, 2),
        "direct_request_ms": round(direct_ms, 2),
        "range_ms": round(range_ms, 2),
        "direct_range_ms": round(direct_range_ms, 2),
    }


# -- the kinds of run -----------------------------------------------------------------------

KINDS: tuple[str, ...] = ("oci", "ketch", "split", "prefetch")


def _import_seconds(code: str) -> float:
    """From spawning ``python -c CODE`` until CODE has run (exit not counted)."""
    started = time.monotonic()
    output = run_command([sys.executable, "-c", f"{code}\nimport time\nprint(time.monotonic())"])
    return float(output.split()[-1]) - started


def _startup_floor(node: Node, runs: int) -> dict[str, float]:
    """The daemon's imports (``ketch.cli.main`` + ``ketch.daemon.mount_daemon``) in a fresh
    interpreter, right after a cache drop and again warm."""
    cold, warm = [], []
    for _ in range(runs):
        node.caches.cold()
        cold.append(_import_seconds(DAEMON_IMPORTS))
        warm.append(_import_seconds(DAEMON_IMPORTS))
    return {
        "cold_import_ms": round(_median(cold) * 1000, 1),
        "warm_import_ms": round(_median(warm) * 1000, 1),
    }


def oci_pull(link: Link, image: str, layout: Path, tag: str) -> None:
    """``skopeo copy docker://LINK/IMAGE oci:LAYOUT:TAG``: OCI's pull, through the link."""
    run_command(
        [
            "skopeo",
            "copy",
            "-q",
            "--src-tls-verify=false",
            f"docker://{link.host}/{image}",
            f"oci:{layout}:{tag}",
        ]
    )


def oci_unpack(layout: Path, tag: str, bundle: Path) -> None:
    """``umoci unpack`` of ``LAYOUT:TAG`` into a runc bundle."""
    run_command(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)])


def no_terminal(bundle: Path) -> None:
    """Set ``process.terminal`` to false in the bundle's ``config.json``, so that the
    container writes to the pipe it is given."""
    config_file = bundle / "config.json"
    config = json.loads(config_file.read_text())
    config["process"]["terminal"] = False
    config_file.write_text(json.dumps(config))


def runc_command(root: Path, bundle: Path, name: str) -> list[str]:
    """``runc run`` of a bundle, with runc's state under ``root``."""
    return ["runc", "--root", str(root), "run", "--bundle", str(bundle), name]


def _oci_run(node: Node, tag: str, expected: str, index: int) -> dict[str, float]:
    ctx, link = node.ctx, node.link
    layout = ctx.work / "cs-oci"
    bundle = ctx.work / "cs-bundle"
    remove(layout)
    remove(bundle)
    runc_root = ctx.work / "cs-runc"
    runc_root.mkdir(exist_ok=True)
    name = f"{CONTAINER_PREFIX}-oci-{index}"
    node.cold(f"corpus:{tag}")
    before = link.counters()
    t0 = time.monotonic()
    oci_pull(link, f"corpus:{tag}", layout, tag)
    t1 = time.monotonic()
    moved = link.counters() - before
    oci_unpack(layout, tag, bundle)
    t2 = time.monotonic()
    no_terminal(bundle)
    t3 = time.monotonic()
    output = run_command(runc_command(runc_root, bundle, name))
    t4 = time.monotonic()
    check_output(f"OCI {tag}", output, expected)
    remove(layout)
    remove(bundle)
    return {
        "pull_s": t1 - t0,
        "unpack_s": t2 - t1,
        "run_s": t4 - t3,
        "total_s": (t1 - t0) + (t2 - t1) + (t4 - t3),
        "link_down_bytes": moved.down_bytes,
        "link_up_bytes": moved.up_bytes,
        "connections": moved.connections,
    }


def _fetch_stats(exchanges: Sequence[Exchange]) -> dict[str, float]:
    """Chunk fetches (ranged GETs): count, bytes, how long the link had one in flight,
    how many at once at most."""
    ranged = [e for e in exchanges if e.range]
    events = sorted([(e.sent, 1) for e in ranged] + [(e.done, -1) for e in ranged])
    busy = 0.0
    in_flight = peak = 0
    since = 0.0
    for at, step in events:
        if in_flight == 0 and step > 0:
            since = at
        in_flight += step
        peak = max(peak, in_flight)
        if in_flight == 0:
            busy += at - since
    sizes = [e.down_bytes for e in ranged]
    return {
        "fetches": len(ranged),
        "fetch_bytes": sum(sizes),
        "median_fetch_bytes": round(_median(sizes)) if sizes else 0,
        "median_fetch_ms": round(_median([e.done - e.sent for e in ranged]) * 1000, 2)
        if ranged
        else 0.0,
        "busy_ms": round(busy * 1000, 1),
        "summed_fetch_ms": round(sum(e.done - e.sent for e in ranged) * 1000, 1),
        "max_in_flight": peak,
        "requests": len(exchanges),
    }


def _byte_range(exchange: Exchange) -> tuple[str, int, int] | None:
    """(blob path, first byte, last byte + 1) of a ranged GET, or None."""
    header = exchange.range or ""
    if not header.startswith("bytes="):
        return None
    first, _, last = header[len("bytes=") :].partition("-")
    if not (first.isdigit() and last.isdigit()):
        return None
    return exchange.target, int(first), int(last) + 1


def merge_whatif(exchanges: Sequence[Exchange]) -> list[dict[str, int]]:
    """The run's chunk fetches, had they been known beforehand (a prefetch list) and merged
    per blob into ranges across gaps of at most G bytes: how many requests, how many bytes
    (gaps included)."""
    ranges = sorted(r for r in (_byte_range(e) for e in exchanges) if r is not None)
    out = []
    for gap in MERGE_GAPS:
        requests = 0
        moved = 0
        blob, start, end = "", 0, 0
        for name, first, last in ranges:
            if name == blob and first <= end + gap:
                end = max(end, last)
                continue
            if blob:
                requests += 1
                moved += end - start
            blob, start, end = name, first, last
        if blob:
            requests += 1
            moved += end - start
        out.append({"gap_kib": gap // 1024, "requests": requests, "bytes": moved})
    return out


def ketch_run_command(image: str, cache: Path, name: str, *, rm_mount: bool) -> list[str]:
    """``ketch run IMAGE`` with an empty or kept chunk cache, as every Ketch run here."""
    command = [*ketch_command(), "run", image, "--cache-dir", str(cache), "--name", name]
    return [*command, "--rm-mount"] if rm_mount else command


def _ketch_run(node: Node, tag: str, expected: str, index: int) -> dict[str, float]:
    """``ketch run`` of ``ketch:TAG`` on a cold node whose node service is up."""
    ctx, link = node.ctx, node.link
    cache = ctx.fresh_dir("cs-cache")
    state = ctx.fresh_dir("cs-state")
    with node_service(state):
        node.cold(f"ketch:{tag}")
        before = link.counters()
        t0 = time.monotonic()
        image = f"docker://{link.host}/ketch:{tag}"
        name = f"{CONTAINER_PREFIX}-{index}"
        output = run_command(ketch_run_command(image, cache, name, rm_mount=True), ketch_env(state))
        t1 = time.monotonic()
    moved = link.counters() - before
    check_output(f"ketch run {tag}", output, expected)
    node.sweep()  # --rm-mount left nothing mounted, normally
    remove(cache)
    remove(state)
    return {
        "total_s": t1 - t0,
        "link_down_bytes": moved.down_bytes,
        "link_up_bytes": moved.up_bytes,
        "connections": moved.connections,
        **_fetch_stats(link.exchanges(t0, t1)),
    }


def _mounted_at(log_file: Path) -> float | None:
    """The daemon log's ``mounted`` line, on this process's monotonic clock."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if "msg=mounted" in line and line.startswith("ts="):
            stamp = line[3:26]
            try:
                wall = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                return None
            return wall - (time.time() - time.monotonic())
    return None


def _split_run(node: Node, tag: str, expected: str, index: int) -> dict[str, Any]:
    ctx, link = node.ctx, node.link
    cache = ctx.fresh_dir("cs-cache")
    state = ctx.fresh_dir("cs-state-split")
    mountpoint = ctx.fresh_dir("cs-mnt")
    image = f"docker://{link.host}/ketch:{tag}"
    with node_service(state):
        node.cold(f"ketch:{tag}")
        c0 = link.counters()
        t0 = time.monotonic()
        mounted = mount(image, mountpoint, cache, state)
        t1 = time.monotonic()
        c1 = link.counters()
        try:
            t_run = time.monotonic()
            name = f"{CONTAINER_PREFIX}-split-{index}"
            output = run_command(
                ketch_run_command(image, cache, name, rm_mount=False), ketch_env(state)
            )
            t2 = time.monotonic()
            c2 = link.counters()
            check_output(f"ketch run {tag} (on a live mount)", output, expected)
            status = json.loads(
                run_command(
                    [*ketch_command(), "status", str(mountpoint), "--json"], ketch_env(state)
                )
            )
            cache_fill = sum(p.stat().st_size for p in (cache / "chunks").rglob("*") if p.is_file())
            mounted_log = _mounted_at(mounted.log_file)
        finally:
            t3 = time.monotonic()
            umount(mountpoint, state, mounted.pid)
            t4 = time.monotonic()
    # The same image again with this run's chunk cache (and bootstrap) kept, everything else
    # cold: what a perfect prefetch would leave to do.
    remove(state)
    warm_state = ctx.fresh_dir("cs-state")
    with node_service(warm_state):
        node.cold(f"ketch:{tag}")
        before = link.counters()
        t5 = time.monotonic()
        name = f"{CONTAINER_PREFIX}-warm-{index}"
        warm_output = run_command(
            ketch_run_command(image, cache, name, rm_mount=True), ketch_env(warm_state)
        )
        t6 = time.monotonic()
    warm_moved = link.counters() - before
    check_output(f"ketch run {tag} (chunk cache warm)", warm_output, expected)
    node.sweep()
    remove(cache)
    remove(warm_state)
    remove(mountpoint)
    metrics: dict[str, float] = status["metrics"]
    files: list[dict[str, Any]] = status["files"]
    exchanges = link.exchanges(t0, t2)
    profile = _profile(t0, t1, t_run, t2, exchanges, files, mounted_log)
    at_mount: Counters = c1 - c0
    in_run: Counters = c2 - c1
    read_bytes = metrics.get("ketch_read_bytes_total", 0.0)
    link_bytes = (c2 - c0).total_bytes
    return {
        "mount_s": t1 - t0,
        "run_s": t2 - t_run,
        "umount_s": t4 - t3,
        "warm_cache_s": t6 - t5,
        "warm_cache_link_bytes": warm_moved.total_bytes,
        "mount_link_bytes": at_mount.total_bytes,
        "run_link_bytes": in_run.total_bytes,
        "link_bytes": link_bytes,
        "backend_bytes": metrics.get("ketch_backend_read_bytes_total", 0.0),
        "read_bytes": read_bytes,
        "trace_bytes": sum(int(f["bytes_read"]) for f in files),
        "cache_fill_bytes": cache_fill,
        "files_read": len(files),
        "fuse_reads": metrics.get("ketch_read_latency_seconds_count", 0.0),
        "fuse_read_seconds": metrics.get("ketch_read_latency_seconds_sum", 0.0),
        "amplification": link_bytes / read_bytes if read_bytes else float("inf"),
        **{f"run_{k}": v for k, v in _fetch_stats(link.exchanges(t_run, t2)).items()},
        "profile": profile,
        "merge_whatif": merge_whatif(link.exchanges(t_run, t2)),
        "timeline": [
            [
                round((e.sent - t0) * 1000, 1),
                round((e.done - t0) * 1000, 1),
                e.down_bytes,
                1 if e.range else 0,
            ]
            for e in exchanges
        ],
        "files": [[f["path"], f["first_access_ms"], f["bytes_read"]] for f in files],
    }


def _profile(
    t0: float,
    t1: float,
    t_run: float,
    t2: float,
    exchanges: Sequence[Exchange],
    files: Sequence[dict[str, Any]],
    mounted_log: float | None,
) -> dict[str, float]:
    """The split run cut into SEGMENTS (ms), and where the trace's clock was put."""
    at_mount = [e for e in exchanges if e.sent <= t1]
    in_run = [e for e in exchanges if e.sent >= t_run]
    if not at_mount or not in_run:
        raise BenchError("cold_start: expected link traffic both at mount and in the run")
    ranged = [e for e in in_run if e.range]
    first_fetch = ranged[0] if ranged else None
    resolve = [e for e in in_run if first_fetch is None or e.sent < first_fetch.sent]
    mount_first = min(e.sent for e in at_mount)
    mount_pulled = max(e.done for e in at_mount)
    run_first = min(e.sent for e in in_run)
    resolved = max(e.done for e in resolve) if resolve else run_first
    # The trace's clock: its first read (ketch run's own /etc/passwd) completed as the
    # first chunk fetch did; the daemon's "mounted" log line (ms resolution) checks it.
    origin = None
    if first_fetch is not None and files:
        origin = first_fetch.done - float(files[0]["first_access_ms"]) / 1000
    elif mounted_log is not None:
        origin = mounted_log
    container = [f for f in files if f["path"] not in _OWN_READS]
    if origin is None or not container:
        raise BenchError("cold_start: no access trace to place the container's reads")
    exec_read = origin + float(container[0]["first_access_ms"]) / 1000
    last_read = origin + max(float(f["first_access_ms"]) for f in files) / 1000
    bounds = [t0, mount_first, mount_pulled, t1, t_run, run_first, resolved, exec_read, last_read]
    bounds.append(t2)
    raw = {}
    keys = [key for key, _ in SEGMENTS]
    cuts = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9)]
    for key, (a, b) in zip(keys, cuts, strict=True):
        raw[key] = round((bounds[b] - bounds[a]) * 1000, 1)
    return {
        **raw,
        "trace_vs_log_ms": round((origin - mounted_log) * 1000, 1) if mounted_log else 0.0,
        "exec_after_run_start_ms": round((exec_read - t_run) * 1000, 1),
    }


# -- the benchmark ------------------------------------------------------------------------


def _summarise(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every number across runs (lists and dicts kept from the median run)."""
    keys = [k for k, v in samples[0].items() if isinstance(v, (int, float))]
    out: dict[str, Any] = {k: round(_median([s[k] for s in samples]), 4) for k in keys}
    return out


def _measure(node: Node, runs: int, meta: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    index = 0
    for bandwidth in BANDWIDTHS:
        node.link.configure(bandwidth=bandwidth, rtt=RTT)
        for tag, expected in IMAGES:
            samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
            for repeat in range(runs):
                shift = repeat % len(KINDS)
                for kind in KINDS[shift:] + KINDS[:shift]:  # so that drift hits each alike
                    index += 1
                    if kind == "oci":
                        samples[kind].append(_oci_run(node, tag, expected, index))
                    elif kind == "ketch":
                        samples[kind].append(_ketch_run(node, tag, expected, index))
                    elif kind == "prefetch":
                        traced = f"{tag}-traced"
                        samples[kind].append(_ketch_run(node, traced, expected, index))
                    else:
                        samples[kind].append(_split_run(node, tag, expected, index))
            oci_ = _summarise(samples["oci"])
            ketch = _summarise(samples["ketch"])
            prefetched = _summarise(samples["prefetch"])
            split = _summarise(samples["split"])
            # The profile of the split run whose total is the median one.
            by_total = sorted(samples["split"], key=lambda s: s["mount_s"] + s["run_s"])
            middle = by_total[len(by_total) // 2]
            profile = {
                key: round(_median([s["profile"][key] for s in samples["split"]]), 1)
                for key in middle["profile"]
            }
            result = {
                "image": tag,
                "bandwidth_mbit": round(bandwidth / 1e6),
                "oci": oci_,
                "ketch": ketch,
                "prefetch": prefetched,
                "split": split,
                "profile": profile,
                "oci_samples_s": [round(s["total_s"], 3) for s in samples["oci"]],
                "ketch_samples_s": [round(s["total_s"], 3) for s in samples["ketch"]],
                "prefetch_samples_s": [round(s["total_s"], 3) for s in samples["prefetch"]],
                "split_samples_s": [round(s["mount_s"] + s["run_s"], 3) for s in samples["split"]],
                "ratio": round(ketch["total_s"] / oci_["total_s"], 4),
                "prefetch_ratio": round(prefetched["total_s"] / oci_["total_s"], 4),
                "oci_read_amplification": round(
                    meta["images"][tag]["oci_bytes"] / split["read_bytes"], 2
                ),
            }
            result["merge_whatif"] = middle["merge_whatif"]
            if tag == IMAGES[-1][0] and bandwidth == BANDWIDTHS[0]:
                result["timeline"] = middle["timeline"]
                result["files"] = middle["files"][:40]
            results.append(result)
            log(
                f"cold_start: {tag} at {bandwidth / 1e6:.0f} Mbit/s: OCI {oci_['total_s']:.2f} s, "
                f"Ketch {ketch['total_s']:.2f} s ({result['ratio']:.2f}x), traced image "
                f"{prefetched['total_s']:.2f} s ({result['prefetch_ratio']:.2f}x), "
                f"amplification {split['amplification']:.2f}x"
            )
    return results


def run(ctx: Context) -> dict[str, Any]:
    runs = ctx.repeats(3, 1)
    load = os.getloadavg()[0]
    with started_node(ctx) as node:
        started = time.monotonic()
        meta = _push_and_convert(node)
        log(f"cold_start: pushed in {meta['push_s']} s, converted in {meta['convert_s']} s")
        calibration = []
        for bandwidth in BANDWIDTHS:
            node.link.configure(bandwidth=bandwidth, rtt=RTT)
            calibration.append(_calibrate(node))
            log(f"cold_start: link {calibration[-1]}")
        setup_s = time.monotonic() - started
        floor = _startup_floor(node, runs)
        log(f"cold_start: daemon imports {floor}")
        results = _measure(node, runs, meta)
        caches = node.caches
    py2 = next(r for r in results if r["image"] == "py2" and r["bandwidth_mbit"] == 200)
    return {
        "runs": runs,
        "rtt_ms": RTT * 1000,
        "load_average": round(load, 2),
        "cache": caches.describe(),
        "setup_s": round(setup_s, 1),
        "target_ratio": TARGET_RATIO,
        "target_amplification": TARGET_AMPLIFICATION,
        "links": calibration,
        "startup_floor": floor,
        **meta,
        "results": results,
        "headline_ratio": py2["ratio"],
        "worst_amplification": max(r["split"]["amplification"] for r in results),
    }


# -- the page -------------------------------------------------------------------------------


def _speed(mbit: float) -> str:
    return f"{mbit / 1000:g} Gbit/s" if mbit >= 1000 else f"{mbit:g} Mbit/s"


def _label(result: dict[str, Any]) -> str:
    return f"{result['image']}, {_speed(result['bandwidth_mbit'])}"


def chart(data: dict[str, Any], path: Path = CHART) -> None:
    """The bar chart (PNG, Agg) of the cold starts and of Ketch's profile."""
    results = data["results"]
    fig = Figure(figsize=(10, 11), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 2]})
    colors = {
        "pull": "#4c72b0",
        "unpack": "#8da0cb",
        "run": "#c7d3ec",
        "ketch": "#dd8452",
        "mount": "#c44e52",
        "lazy": "#f4b183",
        "prefetch": "#55a868",
        "warm": "#b0b0b0",
    }
    labels = []
    y = 0.0
    ticks = []
    for result in results:
        oci_, ketch, split = result["oci"], result["ketch"], result["split"]
        prefetched = result["prefetch"]
        rows = [
            (
                "OCI: pull + unpack + run",
                [("pull", oci_["pull_s"]), ("unpack", oci_["unpack_s"]), ("run", oci_["run_s"])],
            ),
            ("Ketch: ketch run", [("ketch", ketch["total_s"])]),
            ("Ketch split: mount + run", [("mount", split["mount_s"]), ("lazy", split["run_s"])]),
            ("Ketch, traced image", [("prefetch", prefetched["total_s"])]),
            ("Ketch, chunk cache warm", [("warm", split["warm_cache_s"])]),
        ]
        for name, parts in rows:
            left = 0.0
            for part, seconds in parts:
                top.barh(y, seconds, left=left, color=colors[part], edgecolor="white", height=0.8)
                left += seconds
            top.text(left + 0.1, y, f"{left:.1f} s", va="center", fontsize=8)
            ticks.append(y)
            labels.append(f"{_label(result)} | {name}")
            y += 1
        y += 0.6
    top.set_yticks(ticks, labels, fontsize=8)
    top.invert_yaxis()
    top.set_xlabel("seconds, cold node (median)")
    top.set_title(
        f"Cold start through an emulated link (RTT {data['rtt_ms']:g} ms): "
        f"OCI pull + unpack + run vs Ketch lazy run"
    )
    handles = [
        Rectangle((0, 0), 1, 1, color=colors[k])
        for k in ("pull", "unpack", "run", "ketch", "mount", "lazy", "prefetch", "warm")
    ]
    longest = max(r["oci"]["total_s"] for r in results)
    top.set_xlim(0, longest * 1.45)  # room for the legend, right of the longest bar
    top.legend(
        handles,
        [
            "OCI pull",
            "OCI unpack",
            "OCI run",
            "ketch run (total)",
            "ketch mount",
            "ketch run on the mount",
            "ketch run, traced image",
            "ketch run, chunk cache already full",
        ],
        fontsize=8,
        loc="center right",
    )
    top.grid(axis="x", alpha=0.3)
    cmap = colormaps["tab10"]
    for row, result in enumerate(results):
        left = 0.0
        for i, (key, label) in enumerate(SEGMENTS):
            ms = max(0.0, float(result["profile"][key]))
            bottom.barh(
                row,
                ms,
                left=left,
                color=cmap(i),
                edgecolor="white",
                height=0.7,
                label=label if row == 0 else None,
            )
            left += ms
        bottom.text(left + 20, row, f"{left:,.0f} ms", va="center", fontsize=8)
    widest = max(sum(max(0.0, float(r["profile"][k])) for k, _ in SEGMENTS) for r in results)
    bottom.set_xlim(0, widest * 1.12)
    bottom.set_yticks(range(len(results)), [_label(r) for r in results], fontsize=8)
    bottom.invert_yaxis()
    bottom.set_xlabel("ms, Ketch split run (ketch mount, then ketch run on the mount), median")
    bottom.set_title("Where Ketch's cold start goes")
    bottom.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    bottom.grid(axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})


def _s(value: float) -> str:
    return f"{value:.2f}"


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f}"


def render(data: dict[str, Any]) -> str:
    results = data["results"]
    runs = data["runs"]
    chart(data)
    rows = []
    for r in results:
        o, k, f = r["oci"], r["ketch"], r["prefetch"]
        rows.append(
            [
                _label(r),
                _s(o["pull_s"]),
                _s(o["unpack_s"]),
                _s(o["run_s"]),
                f"**{_s(o['total_s'])}**",
                f"**{_s(k['total_s'])}**",
                f"**{r['ratio']:.2f}**",
                _s(f["total_s"]),
                f"{r['prefetch_ratio']:.2f}",
                _mb(o["link_down_bytes"] + o["link_up_bytes"]),
                _mb(k["link_down_bytes"] + k["link_up_bytes"]),
                _mb(f["link_down_bytes"] + f["link_up_bytes"]),
            ]
        )
    cold = table(
        [
            "image, link",
            "OCI pull s",
            "unpack s",
            "run s",
            "OCI total s",
            "Ketch total s",
            "Ketch / OCI",
            "Ketch traced s",
            "traced / OCI",
            "OCI link MB",
            "Ketch link MB",
            "traced link MB",
        ],
        rows,
    )
    split_rows = []
    for r in results:
        s, k = r["split"], r["ketch"]
        split_rows.append(
            [
                _label(r),
                _s(s["mount_s"]),
                _s(s["run_s"]),
                _s(s["mount_s"] + s["run_s"]),
                _s(k["total_s"]),
                _s(s["umount_s"]),
                _s(s["warm_cache_s"]),
                _mb(s["mount_link_bytes"]),
                _mb(s["run_link_bytes"]),
                f"{s['run_fetches']:.0f}",
                f"{s['run_median_fetch_bytes'] / 1024:,.0f}",
                f"{s['run_max_in_flight']:.0f}",
                f"{s['run_busy_ms']:,.0f}",
            ]
        )
    split = table(
        [
            "image, link",
            "mount s",
            "run s",
            "mount + run s",
            "`ketch run` s",
            "umount s",
            "chunk cache warm s",
            "MB at mount",
            "MB in run",
            "chunk fetches",
            "median fetch KiB",
            "most in flight",
            "link busy ms",
        ],
        split_rows,
    )
    profile_rows = []
    for key, label in SEGMENTS:
        profile_rows.append([label, *[f"{r['profile'][key]:,.0f}" for r in results]])
    profile_rows.append(
        [
            "**total (mount + run)**",
            *[f"**{sum(r['profile'][k] for k, _ in SEGMENTS):,.0f}**" for r in results],
        ]
    )
    profile = table(["segment, ms", *[_label(r) for r in results]], profile_rows)
    amp_rows = []
    for r in results:
        s = r["split"]
        amp_rows.append(
            [
                _label(r),
                _mb(s["link_bytes"]),
                _mb(s["mount_link_bytes"]),
                _mb(s["backend_bytes"]),
                _mb(s["cache_fill_bytes"]),
                _mb(s["read_bytes"]),
                f"{s['files_read']:.0f}",
                f"**{s['amplification']:.2f}x**",
                f"{r['oci_read_amplification']:.1f}x",
            ]
        )
    amplification = table(
        [
            "image, link",
            "Ketch link MB",
            "of it at mount",
            "chunk data MB (compressed)",
            "chunks MB (uncompressed)",
            "read by the workload MB",
            "files read",
            "link / read",
            "OCI pull / read",
        ],
        amp_rows,
    )
    link_rows = [
        [
            f"{_speed(c['bandwidth_mbit'])}, RTT {c['rtt_ms']:g} ms",
            f"{c['measured_mbit']:,.0f}",
            f"{c['first_request_ms']:.1f}",
            f"{c['request_ms']:.1f}",
            f"{c['direct_request_ms']:.1f}",
            f"{c['range_ms']:.1f}",
            f"{c['direct_range_ms']:.1f}",
        ]
        for c in data["links"]
    ]
    links = table(
        [
            "link set to",
            "measured Mbit/s",
            "first request ms",
            "request ms",
            "without the link ms",
            "16 KiB range ms",
            "without the link ms",
        ],
        link_rows,
    )
    images = data["images"]
    sizes = "; ".join(
        f"`{tag}`: OCI {mib(i['oci_bytes'])} compressed, Ketch {mib(i['ketch_stored_bytes'])} "
        f"of blobs + {mib(i['bootstrap_bytes'])} bootstrap, {mib(i['file_bytes'])} of file data"
        for tag, i in images.items()
    )
    head = next(r for r in results if r["image"] == "py2" and r["bandwidth_mbit"] == 200)
    verdict = ", ".join(
        f"{'met' if head[key] <= data['target_ratio'] else '**not met**'} by the {kind} image"
        for key, kind in (("prefetch_ratio", "traced"), ("ratio", "plain"))
    )
    worst = data["worst_amplification"]
    amp_verdict = "met" if worst < data["target_amplification"] else "**not met**"
    p = head["profile"]
    s = head["split"]
    total_ms = sum(p[k] for k, _ in SEGMENTS)
    ranked = sorted(SEGMENTS, key=lambda seg: -p[seg[0]])
    biggest = "; ".join(f"{label}: {p[key]:,.0f} ms" for key, label in ranked[:3])
    startup = p["mount_startup"] + p["run_startup"]
    network = p["mount_pull"] + p["run_resolve"]
    rtt_cost = s["run_fetches"] * data["rtt_ms"]
    transfer_ms = s["run_fetch_bytes"] * 8 / (head["bandwidth_mbit"] * 1e6) * 1000
    lag = [r["profile"]["trace_vs_log_ms"] for r in results]
    floor = data["startup_floor"]
    calibration = data["links"][0]
    picture = f"![Cold start bars and Ketch's profile](img/{CHART.name})"
    spread = "; ".join(
        f"{_label(r)}: OCI {min(r['oci_samples_s']):.1f}-{max(r['oci_samples_s']):.1f}, "
        f"Ketch {min(r['ketch_samples_s']):.1f}-{max(r['ketch_samples_s']):.1f}"
        for r in results
    )
    idle_ms = p["workload"] - s["run_busy_ms"]
    fetched = [e for e in head.get("timeline", []) if e[3]]
    small = [e for e in fetched if e[2] < SMALL_FETCH]
    small_ms = sum(e[1] - e[0] for e in small)
    all_ms = sum(e[1] - e[0] for e in fetched)
    whatif_rows = []
    for entry in head["merge_whatif"]:
        at = [entry["bytes"] * 8 / (mbit * 1e6) * 1000 for mbit in (200, 1000)]
        whatif_rows.append(
            [
                f"{entry['gap_kib']:,} KiB",
                f"{entry['requests']:,}",
                _mb(entry["bytes"]),
                f"{entry['requests'] * data['rtt_ms']:,.0f}",
                f"{at[0]:,.0f}",
                f"{at[1]:,.0f}",
            ]
        )
    whatif = table(
        [
            "`py2` fetches merged across gaps up to",
            "requests",
            "MB moved",
            "one RTT each, one after another, ms",
            "transfer at 200 Mbit/s ms",
            "at 1 Gbit/s ms",
        ],
        whatif_rows,
    )
    return f"""\
Corpus images `py1` (python3) and `py2` (python3 + numpy) from a `docker-registry` on loopback
behind a link emulator (`bench/link.py`: a TCP proxy with a token bucket per direction and
RTT/2 of delay each way, one RTT per new connection). Cold node for every run: empty Ketch
cache and state, empty skopeo destination, {data["cache"]}; the registry's blobs of the image
are read back into the page cache after the drop (it stands for a remote server). Median of
{runs} runs (1-minute load average {data["load_average"]} at the start). OCI: `skopeo copy`
through the link to an OCI layout, `umoci unpack`, `runc run` of the image's command. Ketch:
`ketch run docker://LINK/ketch:TAG --cache-dir EMPTY --rm-mount` (includes the unmount), with
the node service (`ketch service start`) running, started before the cache drop as a node
starts its services before any container. Ketch, traced image: the same `ketch run` of an image
converted with `--prefetch-list`, the files its command read in one earlier run in first-access
order (recorded in the setup with `ketch status --paths`), kept in the bootstrap's prefetch
table; the daemon fetches them first, as planned range reads. All print the image's output,
checked every run. Link MB: payload bytes both ways.

{cold}

Spread of the runs (min-max, s): {spread}.

Target: Ketch at most {data["target_ratio"]:g} of OCI's time for `py2` at 200 Mbit/s:
{verdict} ({head["ratio"]:.2f} for the plain image; {head["prefetch_ratio"]:.2f} for the traced
image).

{picture}

**Phase split.** An extra cold run per repeat: `ketch mount` timed alone (manifest and
bootstrap pull, daemon start, FUSE ready: it returns only once the mount answers), then `ketch
run` of the same image, which finds the live mount and reuses it (manifest and config again,
overlay, bundle, runc, the lazy reads); `ketch status --json` before `ketch umount` gives the
daemon's metrics and access trace. Mount + run is more than one `ketch run`: it starts one
more CLI process and resolves the manifest twice. Then, the chunk cache kept and all else cold
again (state, page cache), one more `ketch run --rm-mount`: "chunk cache warm", the floor a
perfect prefetch would approach (only the manifest and config cross the link). Chunk fetches:
ranged GETs on the link during the run; link busy: the time at least one was in flight.

{split}

**Startup profile** of the split runs (ms, median per segment): the link's timeline of HTTP
exchanges (a request leaving the client; the last byte of its response arriving), the daemon's
access trace (`first_access_ms`, the end of a file's first read; put on the same clock by the
first chunk fetch, which `ketch run`'s own read of `/etc/passwd` causes), and the wall clock
around each command. Cross-check: the daemon log's `mounted` line comes {min(-x for x in lag):.0f}
to {max(-x for x in lag):.0f} ms after the trace's start so placed, the time its FUSE init and
control API take.

{profile}

For `py2` at 200 Mbit/s, of {total_ms:,.0f} ms the largest segments are: {biggest}. Process
start-up (the CLI twice and the daemon once, until their first request) is {startup:,.0f} ms;
for scale, the daemon's imports alone take {floor["cold_import_ms"]:,.0f} ms in a fresh
interpreter right after a cache drop and {floor["warm_import_ms"]:,.0f} ms warm. Manifest,
bootstrap and config over the link: {network:,.0f} ms. The workload's {s["run_fetches"]:.0f}
chunk fetches (median {s["run_median_fetch_bytes"] / 1024:,.0f} KiB and
{s["run_median_fetch_ms"]:.1f} ms each, at most {s["run_max_in_flight"]:.0f} in flight) kept
the link busy {s["run_busy_ms"]:,.0f} ms, though their {mib(s["run_fetch_bytes"])} take
{transfer_ms:,.0f} ms at the link's rate: the reads are latency-bound, one after another (an
RTT each is {rtt_cost:,.0f} ms; a 16 KiB ranged GET takes {calibration["range_ms"]:.1f} ms through
the link, {calibration["direct_range_ms"]:.1f} ms without it). In the other {idle_ms:,.0f} ms of
the workload segment no fetch was in flight: the interpreter running, FUSE requests,
decompression and verification; with every chunk already in the cache the whole `ketch run`
takes {s["warm_cache_s"]:.2f} s, against {head["ketch"]["total_s"]:.2f} s cold. In the
median split run, {len(small)} of the {len(fetched)} fetches were under
{SMALL_FETCH >> 10} KiB (small files, one chunk each: a larger chunk size would not make them
fewer), {mib(sum(e[2] for e in small))} in all, yet {small_ms:,.0f} of the {all_ms:,.0f} ms
spent waiting on fetches.

What merging would give: the same run's chunk fetches (their `Range` headers on the link),
had they been known beforehand, as a prefetch list gives them, and merged per blob across gaps
of at most G (blobs are laid out in tree order, so the files of one directory sit together):

{whatif}

**Read amplification** (split run, mount kept until `ketch status`): every byte Ketch moved
over the link (manifest, config, bootstrap, chunks, HTTP both ways) against the bytes the
workload read through FUSE (`ketch_read_bytes_total`, which equals the access trace's sum;
it counts the kernel's readahead, up to 1 MiB past a read, within the file). Chunk data
uncompressed: what the chunk cache holds afterwards.

{amplification}

Target: link / read under {data["target_amplification"]:g}x: {amp_verdict} (worst
{worst:.2f}x).

The link, measured through the proxy before the runs (a {mib(data["links"][0]["bulk_bytes"])}
blob; `GET /v2/` on a new connection, then the median of 10 on it; 10 ranged GETs of 16 KiB):

{links}

Setup, not timed in the runs: registry start, `skopeo copy` of the corpus images
({data["push_s"]:.1f} s), `ketch convert docker://... docker://...` ({data["convert_s"]:.1f}
s), calibration; {data["setup_s"]:.0f} s in all. Sizes: {sizes}.
"""


BENCHMARK = Benchmark("cold_start", "Cold start through an emulated link", run, render)
