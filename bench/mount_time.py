"""How long ``ketch mount`` takes as the image grows, and how much of it is Python start-up.

The 1k, 10k and 100k-file images of ``bootstrap_lookup`` (same generator, same deep path)
are built with ``ketch build``. Each run times, from invoking ``ketch mount`` in a new
process: until it returns (it returns only once the daemon says the mount is ready), and
until a first ``os.stat`` of the 12-component deep path through the mount succeeds. Two
cases, alternating: a first mount on the node (empty cache directory, so the daemon copies
and checks the bootstrap) and a remount (bootstrap already in the cache directory); each
both by ``ketch mount`` alone and with the node service (``ketch service start``) running,
which forks the daemon from a process that has done its imports already. Page
cache warm (the interpreter and the image files are cached, as on a node that mounts
often). ``ketch umount`` is timed too.

The baseline is what ``ketch mount`` pays before any work of its own: two Python processes
one after the other, the ``ketch`` command and the daemon it starts, each starting an
interpreter and importing its modules. Which modules, the code decides (and changes), so
one untimed mount with ``PYTHONPROFILEIMPORTTIME=1`` (inherited by the daemon, whose
stderr is its log) records what each process imports before the mount is ready. The
floor is then sampled right before every timed mount: a fresh ``python -c`` importing the
``ketch`` process's top-level modules, then one importing the daemon's, each timed from
spawn until its imports are done (the child prints ``time.monotonic()``, a clock all
processes share, so interpreter exit is not counted). For reference, median of 5 fresh
processes each: the bare interpreter (``python -c pass``), ``import ketch.cli.main`` and
``import ketch.daemon.mount_daemon``. Opening the image the daemon's way (``open_store`` +
``open_ketch_image`` with a cache directory) is timed in a fresh interpreter. Median of 5
runs (2 with ``--quick``).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bootstrap_lookup import DEEP, SIZES, generate
from bench.context import REPO, BenchError, Context, log, oci, remove, run_ketch, run_python
from bench.mounts import mount, node_service, umount
from bench.report import Benchmark, mib, ratio, table

TARGET_MS = 200.0
#: first mount / remount, by `ketch mount` alone and with the node service running
CASES = ("first", "remount", "first_service", "remount_service")
CASE_LABELS = {
    "first": "first mount",
    "remount": "remount",
    "first_service": "first mount, node service",
    "remount_service": "remount, node service",
}
REFERENCE_IMPORTS = {
    "python_ms": "pass",
    "cli_main_ms": "import ketch.cli.main",
    "daemon_service_ms": "import ketch.daemon.mount_daemon",
}
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$")
_TOP = 10

# Runs in a fresh interpreter: argv = image reference, cache directory.
_OPEN_SNIPPET = """\
import json, sys, time
from pathlib import Path
t0 = time.perf_counter()
from ketch.image.ketch_image import open_ketch_image
from ketch.storage.open import open_store
t1 = time.perf_counter()
store, tag = open_store(sys.argv[1])
image = open_ketch_image(store, tag, cache_dir=Path(sys.argv[2]))
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "inodes": image.bootstrap.inode_count,
                  "bootstrap_bytes": image.bootstrap_layer.size}))
"""


def _python_seconds(code: str) -> float:
    """From spawning ``python -c CODE`` until CODE has run (interpreter exit not counted):
    the child prints CLOCK_MONOTONIC, which is shared by all processes."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport time\nprint(time.monotonic())"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(proc.stdout.split()[-1]) - started


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


# -- what each process imports ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Imports:
    """One process's imports, from its ``-X importtime`` lines."""

    #: top-level imports in order (their own imports nest under them)
    modules: list[str]
    #: self time of every import, summed, in ms (inflated somewhat by the profiling)
    total_ms: float
    #: self time summed per package (``ketch.*`` per subpackage), heaviest first
    packages: list[tuple[str, float]]

    def snippet(self) -> str:
        """Python code that imports the same modules (the floor of this process)."""
        return (
            "import importlib\n"
            f"for name in {self.modules!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        pass\n"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "modules": len(self.modules),
            "ketch_modules": [m for m in self.modules if m.split(".")[0] == "ketch"],
            "total_ms": self.total_ms,
            "heaviest": [{"package": p, "self_ms": ms} for p, ms in self.packages[:_TOP]],
        }


def parse_importtime(text: str) -> Imports:
    modules: list[str] = []
    totals: dict[str, int] = defaultdict(int)
    for line in text.splitlines():
        match = _IMPORT_LINE.match(line)
        if match is None:
            continue
        name = match.group(4)
        if len(match.group(3)) == 1 and name not in modules:
            modules.append(name)
        parts = name.split(".")
        package = ".".join(parts[:2]) if parts[0] == "ketch" else parts[0].lstrip("_")
        totals[package] += int(match.group(1))
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    total = sum(totals.values()) / 1000
    return Imports(modules, round(total, 1), [(p, round(us / 1000, 1)) for p, us in ranked])


def profile_imports(ctx: Context, image: str) -> tuple[Imports, Imports]:
    """The ``ketch`` process's and the daemon's imports up to ready, from one mount."""
    state = ctx.fresh_dir("mt-state-profile")
    mountpoint = ctx.fresh_dir("mt-mnt")
    cache = ctx.fresh_dir("mt-cache-profile")
    mounted = mount(image, mountpoint, cache, state, env={"PYTHONPROFILEIMPORTTIME": "1"})
    try:
        daemon_log = mounted.log_file.read_text(errors="replace")  # read at ready
    finally:
        umount(mountpoint, state, mounted.pid)
    cli = parse_importtime(mounted.stderr)
    daemon = parse_importtime(daemon_log)
    if not cli.modules or not daemon.modules:
        raise BenchError(
            f"PYTHONPROFILEIMPORTTIME=1 ketch mount: expected import times from both "
            f"processes, found {len(cli.modules)} and {len(daemon.modules)} modules"
        )
    remove(state)
    remove(cache)
    return cli, daemon


def reference_imports() -> dict[str, float]:
    """The bare interpreter and the two entry modules, median of 5 fresh processes each."""
    times: dict[str, list[float]] = {key: [] for key in REFERENCE_IMPORTS}
    for _ in range(5):  # interleaved, so that drift hits each alike
        for key, code in REFERENCE_IMPORTS.items():
            times[key].append(_python_seconds(code))
    return {key: _ms(values) for key, values in times.items()}


# -- the mounts -------------------------------------------------------------------------


def _one_mount(
    image: str, mountpoint: Path, cache: Path, state: Path
) -> tuple[float, float, float, float]:
    """(mount returned, first deep stat done, the stat alone, umount), in seconds."""
    started = time.perf_counter()
    mounted = mount(image, mountpoint, cache, state)
    try:
        returned = time.perf_counter() - started
        before = time.perf_counter()
        os.stat(mountpoint / DEEP)
        done = time.perf_counter()
    finally:
        before_umount = time.perf_counter()
        umount(mountpoint, state, mounted.pid)
        umount_seconds = time.perf_counter() - before_umount
    return returned, done - started, done - before, umount_seconds


def _open_image_ms(ctx: Context, image: str, cache: Path | None, runs: int) -> tuple[float, Any]:
    """The daemon's image open in fresh interpreters (``cache`` None: a new one each time)."""
    samples = []
    for _ in range(runs):
        where = cache if cache is not None else ctx.fresh_dir("mt-cache-open")
        samples.append(run_python(_OPEN_SNIPPET, [image, str(where / "bootstraps")]))
    return _ms([s["open"] for s in samples]), samples[0]


def _size(ctx: Context, files: int, runs: int, floor_code: tuple[str, str]) -> dict[str, Any]:
    tree = ctx.fresh_dir(f"mt-tree-{files}")
    layout = ctx.work / f"mt-image-{files}"
    remove(layout)
    try:
        generate(tree, files)
        run_ketch(["build", str(tree), oci(layout, "t")])
        remove(tree)
        os.sync()  # write back the generated tree's churn now, not during the timed mounts
        image = oci(layout, "t")
        state = ctx.fresh_dir("mt-state")
        mountpoint = ctx.fresh_dir("mt-mnt")
        warm_cache = ctx.fresh_dir(f"mt-cache-{files}")
        _one_mount(image, mountpoint, warm_cache, state)  # puts the bootstrap in the cache
        samples: dict[str, dict[str, list[float]]] = {
            case: {"mount": [], "first_stat": [], "stat": [], "umount": [], "floor": []}
            for case in CASES
        }
        # A second state directory with the node service running in it: `ketch mount`
        # there asks the service, elsewhere it forks its own daemon.
        service_state = ctx.fresh_dir("mt-state-service")
        with node_service(service_state):
            for _ in range(runs):
                for case in CASES:  # alternating, so that drift hits each alike
                    sample = samples[case]
                    # The floor, sampled next to each mount: the machine's load moves both.
                    sample["floor"].append(sum(_python_seconds(code) for code in floor_code))
                    first = case.startswith("first")
                    cache = ctx.fresh_dir("mt-cache-empty") if first else warm_cache
                    where = service_state if case.endswith("service") else state
                    returned, first_stat, stat_only, umount_seconds = _one_mount(
                        image, mountpoint, cache, where
                    )
                    sample["mount"].append(returned)
                    sample["first_stat"].append(first_stat)
                    sample["stat"].append(stat_only)
                    sample["umount"].append(umount_seconds)
        result: dict[str, Any] = {"files": files + 1}
        for case in CASES:
            sample = samples[case]
            result[case] = {
                "mount_ms": [round(v * 1000, 1) for v in sample["mount"]],
                "floor_ms": [round(v * 1000, 1) for v in sample["floor"]],
                "median_mount_ms": _ms(sample["mount"]),
                "median_floor_ms": _ms(sample["floor"]),
                "median_first_stat_ms": _ms(sample["first_stat"]),
                "median_stat_only_ms": round(statistics.median(sample["stat"]) * 1000, 2),
                "median_umount_ms": _ms(sample["umount"]),
                "ratio_to_floor": round(
                    statistics.median(sample["mount"]) / statistics.median(sample["floor"]), 2
                ),
            }
        result["remount"]["open_image_ms"], facts = _open_image_ms(ctx, image, warm_cache, runs)
        result["first"]["open_image_ms"], _ = _open_image_ms(ctx, image, None, runs)
        result["remount_service"]["open_image_ms"] = result["remount"]["open_image_ms"]
        result["first_service"]["open_image_ms"] = result["first"]["open_image_ms"]
        result["inodes"] = facts["inodes"]
        result["bootstrap_bytes"] = facts["bootstrap_bytes"]
        remove(warm_cache)
        return result
    finally:
        remove(tree)
        remove(layout)


def run(ctx: Context) -> dict[str, Any]:
    runs = ctx.repeats(5, 2)
    load = os.getloadavg()[0]  # other work on the machine widens the spread of runs
    sizes = SIZES[:2] if ctx.quick else SIZES
    if not sizes:
        raise BenchError("mount_time: no image sizes to measure")
    reference = reference_imports()
    profile_tree = ctx.fresh_dir("mt-profile-tree")
    profile_layout = ctx.work / "mt-profile-image"
    try:
        (profile_tree / "file").write_bytes(b"ketch\n")
        run_ketch(["build", str(profile_tree), oci(profile_layout, "t")])
        cli, daemon = profile_imports(ctx, oci(profile_layout, "t"))
    finally:
        remove(profile_tree)
        remove(profile_layout)
    floor_code = (cli.snippet(), daemon.snippet())
    log(
        f"mount_time: python {reference['python_ms']} ms; the ketch process imports "
        f"{len(cli.modules)} top-level modules, the daemon {len(daemon.modules)}"
    )
    results = []
    for files in sizes:
        results.append(_size(ctx, files, runs, floor_code))
        first, again = results[-1]["first"], results[-1]["remount"]
        log(
            f"mount_time: {files} files: first mount {first['median_mount_ms']} ms, "
            f"remount {again['median_mount_ms']} ms (floor {again['median_floor_ms']} ms); "
            f"with the node service {results[-1]['first_service']['median_mount_ms']} ms and "
            f"{results[-1]['remount_service']['median_mount_ms']} ms"
        )
    worst = max(r[c]["median_first_stat_ms"] for r in results for c in ("first", "remount"))
    worst_service = max(
        r[c]["median_first_stat_ms"] for r in results for c in ("first_service", "remount_service")
    )
    first_ms = results[0]["remount"]["median_mount_ms"]
    last_ms = results[-1]["remount"]["median_mount_ms"]
    return {
        "deep_path": DEEP,
        "runs": runs,
        "load_average": round(load, 2),
        "target_ms": TARGET_MS,
        "reference": reference,
        "cli_process": cli.to_json(),
        "daemon_process": daemon.to_json(),
        "sizes": results,
        "worst_first_stat_ms": worst,
        "worst_service_first_stat_ms": worst_service,
        "growth": round(last_ms / first_ms, 2) if first_ms > 0 else None,
    }


def _heaviest(process: dict[str, Any], top: int = 6) -> str:
    return ", ".join(f"`{h['package']}` {h['self_ms']:.0f}" for h in process["heaviest"][:top])


def render(data: dict[str, Any]) -> str:
    ref, cli, daemon = data["reference"], data["cli_process"], data["daemon_process"]
    rows = []
    for s in data["sizes"]:
        for case in CASES:
            label = CASE_LABELS[case]
            entry = s[case]
            rows.append(
                [
                    f"{s['files']:,} files, {label}",
                    mib(s["bootstrap_bytes"]),
                    f"**{entry['median_mount_ms']:.0f}**",
                    f"{entry['median_first_stat_ms']:.0f}",
                    f"{entry['median_stat_only_ms']:.2f}",
                    f"{entry['open_image_ms']:.1f}",
                    f"{entry['median_floor_ms']:.0f}",
                    f"{entry['median_mount_ms'] - entry['median_floor_ms']:+.0f}",
                    ratio(entry["ratio_to_floor"]),
                    f"{entry['median_umount_ms']:.0f}",
                ]
            )
    headers = [
        "image",
        "bootstrap",
        "mount ms",
        "to first stat ms",
        "stat ms",
        "image open ms",
        "floor ms",
        "beyond floor ms",
        "mount / floor",
        "umount ms",
    ]
    service_worst = data.get("worst_service_first_stat_ms", float("inf"))
    verdict = (
        "met with the node service running"
        if service_worst < data["target_ms"]
        else "**not met** with the node service"
    ) + (
        ", and by `ketch mount` alone"
        if data["worst_first_stat_ms"] < data["target_ms"]
        else ", **not met** by `ketch mount` alone"
    )
    floors = [s[c]["median_floor_ms"] for s in data["sizes"] for c in ("first", "remount")]
    mounts = [s[c]["median_mount_ms"] for s in data["sizes"] for c in ("first", "remount")]
    share = sum(floors) / sum(mounts)
    ketch_modules = ", ".join(f"`{m}`" for m in daemon["ketch_modules"])
    return f"""\
Generated images (the `bootstrap_lookup` generator), `ketch mount` in a new process each
run, page cache warm. Times in ms, median of {data["runs"]} runs (1-minute load average
{data.get("load_average", "?")} at the start): until `ketch mount` returns (the mount is
ready); until a first `stat` of the {data["deep_path"].count("/") + 1}-component path
`/{data["deep_path"]}` through the mount succeeds, counted from invoking `ketch mount`; the
`stat` alone; the daemon's image open (`open_store` + `open_ketch_image`, in a fresh
interpreter); the start-up floor, sampled right before each mount, and how far the mount is
above it; and `ketch umount`. "First mount": empty cache directory, so the daemon copies and
checks the bootstrap; "remount": the bootstrap is already cached. "Node service": the same
with `ketch service start` running (as a node runs it before any container), so that the
daemon is forked from a process that has imported FUSE, trio and the store clients
already; the floor does not apply to those rows (no daemon interpreter starts).

{table(headers, rows)}

The floor is two fresh interpreters one after the other, each importing what one of the two
processes of `ketch mount` imports before the mount is ready (recorded by one mount with
`PYTHONPROFILEIMPORTTIME=1`): the `ketch` command's {cli["modules"]} top-level modules, then
the daemon's {daemon["modules"]} (its Ketch modules: {ketch_modules}). Over all rows it is
{share:.0%} of the mount time. Under the profiler the `ketch` process spends
{cli["total_ms"]:.0f} ms importing (heaviest, self ms per package: {_heaviest(cli)}) and
the daemon {daemon["total_ms"]:.0f} ms ({_heaviest(daemon)}). For reference, fresh
processes, median of 5: the interpreter alone (`python -c pass`) {ref["python_ms"]:.0f}
ms, `import ketch.cli.main` {ref["cli_main_ms"]:.0f} ms, `import ketch.daemon.mount_daemon`
{ref["daemon_service_ms"]:.0f} ms.

Target: under {data["target_ms"]:.0f} ms to the first stat, and flat: {verdict} (worst median
{service_worst:.0f} ms with the service, {data["worst_first_stat_ms"]:.0f} ms without; remounting {data["sizes"][-1]["files"]:,} files takes
{data["growth"]}x the time of {data["sizes"][0]["files"]:,}).
"""


BENCHMARK = Benchmark("mount_time", "Mount time as the image grows", run, render)
