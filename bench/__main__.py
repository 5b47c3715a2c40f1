"""``python -m bench [--only NAME] [--quick]``: run benchmarks, write results and the page."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import (
    bootstrap_lookup,
    cdc_vs_fixed,
    cold_start,
    convert_speed,
    deep_tree,
    large_dir,
    metadata_walk,
    mount_read,
    mount_time,
    registry_dedup,
    sparse_file,
    stored_bytes,
)
from bench.context import REPO, WORK_ROOT, Context, ensure_corpus, log, remove
from bench.machine import current
from bench.report import Benchmark, write_page, write_result

BENCHMARKS: tuple[Benchmark, ...] = (
    convert_speed.BENCHMARK,
    bootstrap_lookup.BENCHMARK,
    stored_bytes.BENCHMARK,
    registry_dedup.BENCHMARK,
    cdc_vs_fixed.BENCHMARK,
    mount_read.BENCHMARK,
    metadata_walk.BENCHMARK,
    mount_time.BENCHMARK,
    cold_start.BENCHMARK,
    large_dir.BENCHMARK,
    deep_tree.BENCHMARK,
    sparse_file.BENCHMARK,
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [bench.name for bench in BENCHMARKS]
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run Ketch's benchmarks; write bench/results/*.json and docs/benchmarks.md.",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=names,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(names)}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, no 100k-file image (a smoke run)"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: rebuild docs/benchmarks.md from bench/results/*.json",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.render_only:
        log(f"wrote {write_page(BENCHMARKS).relative_to(REPO)}")
        return 0
    selected = [bench for bench in BENCHMARKS if not args.only or bench.name in args.only]
    machine = current()
    ensure_corpus()
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=WORK_ROOT))
    ctx = Context(work=work, quick=args.quick)
    started = time.perf_counter()
    try:
        for bench in selected:
            log(f"{bench.name}: running")
            bench_started = time.perf_counter()
            data = bench.run(ctx)
            seconds = time.perf_counter() - bench_started
            path = write_result(bench, data, machine, quick=args.quick, seconds=seconds)
            log(f"{bench.name}: {seconds:.0f} s -> {path.relative_to(REPO)}")
    finally:
        remove(work)
    page = write_page(BENCHMARKS)
    log(f"all done in {time.perf_counter() - started:.0f} s -> {page.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
