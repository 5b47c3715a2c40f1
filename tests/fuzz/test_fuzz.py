"""The short fuzz pass of ``make test``: every target replays its committed corpus (seeds
and the inputs that once broke a parser), then atheris mutates it for a few seconds.

``KETCH_FUZZ_SECONDS`` sets the seconds per target (default 3). A failure prints the
failing input and the command that replays it (docs/testing.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.runner import CORPUS, SELFTEST, TARGET_NAMES, fuzz_target

SECONDS = int(os.environ.get("KETCH_FUZZ_SECONDS", "3"))


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_target_has_seeds(target: str) -> None:
    assert any((CORPUS / target).iterdir()), f"no seeds in {CORPUS / target}"


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_fuzz_target_finds_nothing(target: str, tmp_path: Path) -> None:
    result = fuzz_target(target, SECONDS, tmp_path)
    assert result.ok, result.report()


def test_a_crash_fails_the_pass_and_names_its_input(tmp_path: Path) -> None:
    """The harness itself, on the self-test target (an error that is not a KetchError
    on inputs starting with b"crash"): the run fails, keeps the input, says how to
    replay it."""
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "boom").write_bytes(b"crash!")
    result = fuzz_target(SELFTEST, 1, tmp_path / "work", seeds=seeds)
    assert not result.ok
    assert [p.read_bytes() for p in result.artifacts] == [b"crash!"]
    report = result.report()
    assert f"-m tests.fuzz replay {SELFTEST} {result.artifacts[0]}" in report
    assert "ValueError: not the format's own error" in report
