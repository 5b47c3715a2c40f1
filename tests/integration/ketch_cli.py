"""Run the ``ketch`` command in a fresh process, as a user would."""

from __future__ import annotations

import subprocess
import sys

import pytest

KETCH = [sys.executable, "-m", "ketch.cli.main"]


def ketch(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ketch ARGS``; a non-zero exit fails the test unless ``check`` is False."""
    result = subprocess.run(
        [*KETCH, *args], capture_output=True, text=True, check=False, timeout=300
    )
    if check and result.returncode != 0:
        pytest.fail(f"ketch {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result
