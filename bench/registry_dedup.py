"""Bytes uploaded to and stored by a registry for corpus ``py1`` then ``py2``: the OCI gzip
layers pushed by ``skopeo``, against Ketch images converted registry to registry, py2
with and without py1 as chunk dictionary.

Every scenario gets a fresh plain ``docker-registry`` on loopback (``scripts/registry.py``)
with a small byte-counting TCP relay in front of it; every client talks to the relay.

- **bytes uploaded**: bytes the clients sent to the registry during one step (the relay's
  client-to-registry count: request lines, headers and bodies, so HTTP overhead included).
  For Ketch also its registry client's counters (blob payload uploaded; blobs uploaded,
  mounted from another repository, skipped as present), summed over the clients of one
  ``ketch convert`` run in-process.
- **bytes stored**: growth, over one step, of the sum of the blob ``data`` files under the
  registry's ``docker/registry/v2/blobs`` (layers, Ketch blobs, bootstraps, configs and
  manifests alike: distribution stores each digest once, whatever repositories link it).

Scenarios, each on its own registry:

- **OCI**: ``skopeo copy`` py1 to ``corpus:py1``, then py2 to ``corpus:py2`` (skopeo finds
  py1's layers present in the repository and sends only py2's new one).
- **Ketch**: the corpus is pushed first (not counted), then ``ketch convert
  docker://R/corpus:py1 docker://R/ketch:py1`` (the py1 row), then py2 one of three ways:
  no dictionary to a separate repository ``ketch-nodict:py2``; no dictionary to the same
  repository ``ketch:py2`` (where py1's blobs already are, as skopeo pushes py2 next to
  py1); ``--chunk-dict docker://R/ketch:py1`` to ``ketch-dict:py2`` (the dictionary blobs
  py2 references are mounted from ``ketch``, not uploaded).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.registry import RegistryServer, RunningRegistry

from bench.context import REPO, BenchError, Context, log, oci, remove, run_python
from bench.report import Benchmark, mib, ratio, table

_TIMEOUT = 900
_BLOBS = Path("storage") / "docker" / "registry" / "v2" / "blobs"
_STATS = ("bytes_uploaded", "bytes_downloaded", "blobs_uploaded", "blobs_mounted", "blobs_skipped")

# ``ketch convert ARGS --json`` in this interpreter, with every RegistryClient recorded so
# that its transfer counters can be read at the end. Prints {"summary": ..., "stats": ...}.
_CONVERT = f"""
import contextlib, io, json, sys
from ketch.storage.registry import client as registry_client

clients = []
_init = registry_client.RegistryClient.__init__

def _recording_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    clients.append(self)

registry_client.RegistryClient.__init__ = _recording_init
from ketch.cli.main import main

out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main([*sys.argv[1:], "--json"])
if code != 0:
    sys.exit(code)
unique = list({{id(c): c for c in clients}}.values())
stats = {{name: sum(getattr(c.stats, name) for c in unique) for name in {_STATS!r}}}
print(json.dumps({{"summary": json.loads(out.getvalue()), "stats": stats}}))
"""


# -- the byte-counting relay ----------------------------------------------------------------


class Relay:
    """A loopback TCP relay to ``target`` that counts the bytes it forwards each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = 0  # client -> registry
        self.received = 0  # registry -> client
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.sent, self.received

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, dest, upward in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, dest, upward), name="relay-pump", daemon=True
                ).start()

    def _pump(self, source: socket.socket, dest: socket.socket, upward: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                dest.sendall(data)
                with self._lock:
                    if upward:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dest.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=5)


# -- one registry with its relay -------------------------------------------------------------


@dataclass(slots=True)
class Step:
    """What one push or conversion sent to and left in the registry."""

    uploaded: int  # bytes client -> registry (relay)
    downloaded: int  # bytes registry -> client (relay)
    stored: int  # growth of the blob data files
    stored_blobs: int  # new blob data files
    seconds: float
    ketch: dict[str, Any] | None = None  # Ketch client counters and what the summary says

    def to_json(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "downloaded": self.downloaded,
            "stored": self.stored,
            "stored_blobs": self.stored_blobs,
            "seconds": round(self.seconds, 2),
            **({"ketch": self.ketch} if self.ketch is not None else {}),
        }


@dataclass(slots=True)
class Scene:
    registry: RunningRegistry
    relay: Relay

    @property
    def host(self) -> str:
        return self.relay.host

    def storage(self) -> tuple[int, int]:
        """(bytes, count) of the blob data files the registry holds."""
        root = self.registry.root / _BLOBS
        sizes = [p.stat().st_size for p in root.rglob("data") if p.is_file()]
        return sum(sizes), len(sizes)

    def skopeo_push(self, corpus: Path, tag: str) -> None:
        _run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                oci(corpus, tag),
                f"docker://{self.host}/corpus:{tag}",
            ]
        )

    def measure(self, action: Callable[[], dict[str, Any] | None]) -> Step:
        """Run ``action()`` (it may return Ketch counters) and what it cost."""
        sent, received = self.relay.counts()
        stored, blobs = self.storage()
        started = time.perf_counter()
        ketch = action()
        seconds = time.perf_counter() - started
        time.sleep(0.2)  # let the relay's pumps count the last bytes of closing connections
        sent2, received2 = self.relay.counts()
        stored2, blobs2 = self.storage()
        return Step(
            sent2 - sent, received2 - received, stored2 - stored, blobs2 - blobs, seconds, ketch
        )

    def convert(self, source: str, dest: str, *extra: str) -> dict[str, Any]:
        """``ketch convert docker://HOST/SOURCE docker://HOST/DEST``: counters + summary."""
        result = run_python(
            _CONVERT,
            ["convert", f"docker://{self.host}/{source}", f"docker://{self.host}/{dest}", *extra],
        )
        summary, stats = result["summary"], result["stats"]
        own = {layer["blob"] for layer in summary["layers"] if layer["blob"]}
        sizes = {blob["digest"]: blob["size"] for blob in summary["blobs"]}
        borrowed = [d for d in sizes if d not in own]
        return {
            **stats,
            "own_blobs": len(own),
            "own_blob_bytes": sum(sizes[d] for d in own),
            "dict_blobs": len(borrowed),
            "dict_blob_bytes": sum(sizes[d] for d in borrowed),
            "bootstrap_bytes": summary["bootstrap_size"],
            "chunks": sum(layer["chunks"] for layer in summary["layers"]),
            "stored_chunks": sum(layer["stored_chunks"] for layer in summary["layers"]),
            "file_bytes": summary["file_bytes"],
            "blobs": sorted(sizes),
        }


def _run(command: Sequence[str]) -> None:
    proc = subprocess.run(
        list(command), cwd=REPO, capture_output=True, text=True, check=False, timeout=_TIMEOUT
    )
    if proc.returncode != 0:
        raise BenchError(
            f"`{' '.join(command)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )


@contextlib.contextmanager
def scene(ctx: Context, name: str) -> Iterator[Scene]:
    """A fresh registry (storage in the run's work directory) behind a fresh relay."""
    server = RegistryServer("plain", ctx.fresh_dir(f"registry-{name}"))
    relay: Relay | None = None
    try:
        running = server.start()
        assert server.port is not None
        relay = Relay(server.port)
        yield Scene(running, relay)
    finally:
        if relay is not None:
            relay.close()
        server.stop()
        remove(server.root)


# -- the benchmark ---------------------------------------------------------------------------


def _oci(ctx: Context) -> dict[str, Any]:
    with scene(ctx, "oci") as sc:
        log("registry_dedup: OCI, skopeo copy py1 then py2")
        py1 = sc.measure(lambda: sc.skopeo_push(ctx.corpus, "py1"))
        py2 = sc.measure(lambda: sc.skopeo_push(ctx.corpus, "py2"))
        return {"py1": py1.to_json(), "py2": py2.to_json()}


def _ketch(ctx: Context, name: str, dest: str, extra: Sequence[str]) -> dict[str, Any]:
    with scene(ctx, name) as sc:
        log(f"registry_dedup: Ketch ({name}): corpus push, py1, py2 -> {dest}")
        sc.skopeo_push(ctx.corpus, "py1")
        sc.skopeo_push(ctx.corpus, "py2")
        py1 = sc.measure(lambda: sc.convert("corpus:py1", "ketch:py1"))
        args = [a.replace("HOST", sc.host) for a in extra]
        py2 = sc.measure(lambda: sc.convert("corpus:py2", dest, *args))
        assert py1.ketch is not None and py2.ketch is not None
        # py2's blobs that are byte for byte py1's (same digest): the registry keeps one copy.
        py2.ketch["blobs_in_py1"] = len(set(py2.ketch["blobs"]) & set(py1.ketch["blobs"]))
        return {"dest": dest, "py1": py1.to_json(), "py2": py2.to_json()}


def run(ctx: Context) -> dict[str, Any]:
    return {
        "oci": _oci(ctx),
        "ketch_nodict": _ketch(ctx, "nodict", "ketch-nodict:py2", []),
        "ketch_nodict_same_repo": _ketch(ctx, "nodict-same", "ketch:py2", []),
        "ketch_dict": _ketch(
            ctx, "dict", "ketch-dict:py2", ["--chunk-dict", "docker://HOST/ketch:py1"]
        ),
    }


# -- the page ----------------------------------------------------------------------------


def _what(step: dict[str, Any]) -> str:
    k = step["ketch"]
    parts = [f"{k['blobs_uploaded']} uploaded"]
    if k["blobs_mounted"]:
        parts.append(f"{k['blobs_mounted']} mounted")
    if k["blobs_skipped"]:
        parts.append(f"{k['blobs_skipped']} present")
    return ", ".join(parts)


def render(data: dict[str, Any]) -> str:
    o1, o2 = data["oci"]["py1"], data["oci"]["py2"]
    k1 = data["ketch_dict"]["py1"]
    variants = [
        ("py2, no dict, to `ketch-nodict`", data["ketch_nodict"]["py2"]),
        ("py2, no dict, to `ketch` (next to py1)", data["ketch_nodict_same_repo"]["py2"]),
        ("py2, `--chunk-dict` py1, to `ketch-dict`", data["ketch_dict"]["py2"]),
    ]
    rows = [
        [
            "py1",
            mib(o1["uploaded"]),
            mib(o1["stored"]),
            mib(k1["uploaded"]),
            mib(k1["stored"]),
            _what(k1),
            ratio(k1["uploaded"] / o1["uploaded"]),
            ratio(k1["stored"] / o1["stored"]),
        ]
    ]
    for label, step in variants:
        rows.append(
            [
                label,
                mib(o2["uploaded"]),
                mib(o2["stored"]),
                f"**{mib(step['uploaded'])}**",
                f"**{mib(step['stored'])}**",
                _what(step),
                ratio(step["uploaded"] / o2["uploaded"]),
                ratio(step["stored"] / o2["stored"]),
            ]
        )
    headers = [
        "image",
        "OCI uploaded",
        "OCI stored",
        "Ketch uploaded",
        "Ketch stored",
        "Ketch blobs",
        "uploaded Ketch / OCI",
        "stored Ketch / OCI",
    ]
    return f"""\
Corpus py1, then py2 (py1 plus one layer), pushed to a plain `docker-registry` on loopback,
a fresh one per scenario. OCI: `skopeo copy` of the gzip layers to `corpus:py1` then
`corpus:py2`. Ketch: `ketch convert docker://R/corpus:TAG docker://R/REPO:TAG` (fixed 1 MiB
chunks, zstd 3) of py1 to `ketch:py1`, then of py2 three ways, each on its own registry.
Uploaded = bytes the client sent to the registry in that step (HTTP requests with headers,
counted by a TCP relay in front of the registry); stored = growth of the registry's blob
files in that step (layers, Ketch blobs, bootstraps, configs, manifests). py2 rows count
py2's step alone, with py1 already in the registry. Ketch blobs: data blobs, bootstrap and
config as Ketch's registry client counted them (uploaded; mounted from another repository;
already in the repository); manifests are not in that count.

{table(headers, rows)}

{_findings(data)}
"""


def _findings(data: dict[str, Any]) -> str:
    nodict, same, withdict = (
        data["ketch_nodict"]["py2"],
        data["ketch_nodict_same_repo"]["py2"],
        data["ketch_dict"]["py2"],
    )
    kn, kd = nodict["ketch"], withdict["ketch"]
    if nodict["stored"] == withdict["stored"]:
        stored = (
            f"The registry stores the same for py2 with and without the dictionary "
            f"({mib(withdict['stored'])}): without one, {kn['blobs_in_py1']} of the "
            f"{kn['own_blobs']} blobs converting py2 writes are byte for byte py1's (same "
            f"digests), and the registry keeps each digest once."
        )
    else:
        stored = (
            f"The registry stores {mib(nodict['stored'])} for py2 without the dictionary and "
            f"{mib(withdict['stored'])} with it ({kn['blobs_in_py1']} of the "
            f"{kn['own_blobs']} blobs converting py2 without one writes are py1's)."
        )
    return f"""\
{stored} The dictionary changes what is uploaded to another repository: Ketch checks for
its own blobs in the destination repository only (`HEAD`) and mounts none of them from
another, so without a dictionary it uploads every blob, py1's included
({kn["blobs_uploaded"]} blobs, {mib(nodict["uploaded"])} sent); with `--chunk-dict`, py2's
bootstrap points at {kd["dict_blobs"]} of py1's blobs ({mib(kd["dict_blob_bytes"])}) in
place, which are mounted across repositories (`POST ?mount=&from=ketch`,
{kd["blobs_mounted"]} mounted), and only {kd["blobs_uploaded"]} go up, the new data blob,
the bootstrap and the config ({mib(withdict["uploaded"])} sent; {kd["stored_chunks"]:,}
of py2's {kd["chunks"]:,} chunks were new). Converted into py1's own repository without a dictionary, py2 sends
{mib(same["uploaded"])} ({same["ketch"]["blobs_skipped"]} blobs already there), as skopeo
does with OCI layers.
"""


BENCHMARK = Benchmark(
    "registry_dedup", "Registry push: bytes uploaded and stored, py1 then py2", run, render
)
