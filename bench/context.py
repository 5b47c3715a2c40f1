"""Where a benchmark run works, and how it drives the ``ketch`` command.

Every benchmark gets one ``Context``: the repository root, the corpus layout (built with
``make corpus`` when missing), a private work directory under ``.cache/bench`` that is
removed when the run ends, and whether this is a ``--quick`` run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / ".cache" / "corpus" / "oci"
WORK_ROOT = REPO / ".cache" / "bench"
_TIMEOUT = 900


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (a command failed, data is odd)."""


@dataclass(frozen=True, slots=True)
class Context:
    work: Path
    quick: bool

    @property
    def corpus(self) -> Path:
        return CORPUS

    def fresh_dir(self, name: str) -> Path:
        """An empty directory ``name`` under the work directory (emptied if it exists)."""
        path = self.work / name
        remove(path)
        path.mkdir(parents=True)
        return path

    def repeats(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def ensure_corpus() -> Path:
    """The corpus OCI layout, built by ``make corpus`` from the repository root if missing."""
    if not (CORPUS / "index.json").is_file():
        print("bench: corpus missing, running `make corpus`", file=sys.stderr)
        subprocess.run(["make", "corpus"], cwd=REPO, check=True, timeout=1800)
    if not (CORPUS / "index.json").is_file():
        raise BenchError(f"{CORPUS}: expected an OCI layout after `make corpus`, found none")
    return CORPUS


def oci(layout: Path, tag: str) -> str:
    """An ``oci:DIR:TAG`` reference (absolute, so that it does not depend on the cwd)."""
    return f"oci:{layout.resolve()}:{tag}"


def ketch_command() -> list[str]:
    """The ``ketch`` entry point of the interpreter running the benchmarks."""
    script = Path(sys.executable).with_name("ketch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "ketch.cli.main"]


@dataclass(frozen=True, slots=True)
class KetchRun:
    summary: dict[str, Any]
    wall_seconds: float


def run_ketch(args: Sequence[str]) -> KetchRun:
    """Run ``ketch ARGS --json`` in a fresh process; its parsed summary and wall time."""
    command = [*ketch_command(), *args, "--json"]
    started = time.perf_counter()
    proc = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, check=False, timeout=_TIMEOUT
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(
            f"`{' '.join(command)}` exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    try:
        summary = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"`{' '.join(command)}`: expected JSON on stdout: {exc}") from None
    if not isinstance(summary, dict):
        raise BenchError(f"`{' '.join(command)}`: expected a JSON object, found {summary!r}")
    return KetchRun(summary, wall)


def run_python(code: str, args: Sequence[str]) -> dict[str, Any]:
    """Run a snippet in a fresh interpreter; it prints one JSON object, returned parsed."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    if proc.returncode != 0:
        raise BenchError(f"python snippet exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout)
    if not isinstance(result, dict):
        raise BenchError(f"python snippet: expected a JSON object, found {result!r}")
    return result


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
