"""The facts about the machine and code a result was measured on."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.context import REPO


@dataclass(frozen=True, slots=True)
class Machine:
    nproc: int
    cpu_model: str
    memory_gib: float
    python: str
    system: str
    ketch_commit: str
    date: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.nproc} cores ({self.cpu_model}), {self.memory_gib:.0f} GiB, "
            f"Python {self.python}, {self.system}"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _system() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))}, {platform.system()} {platform.release()}"
    except OSError:
        pass
    return f"{platform.system()} {platform.release()}"


def _commit() -> str:
    """HEAD of the repository (read-only; uncommitted edits are not reflected)."""
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except OSError:
        return "unknown"
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def current() -> Machine:
    return Machine(
        nproc=len(os.sched_getaffinity(0)),
        cpu_model=_cpu_model(),
        memory_gib=round(_memory_gib(), 1),
        python=platform.python_version(),
        system=_system(),
        ketch_commit=_commit(),
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
