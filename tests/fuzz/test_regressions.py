"""Inputs that broke a parser, each kept in the corpus as ``regress-*`` and checked here
through the public API: what the parser must do with it now (the format's own error, or
the right result), where it used to raise something else."""

from __future__ import annotations

from pathlib import Path

from ketch.format.bootstrap import Bootstrap
from ketch.format.bootstrap_verify import verify_bootstrap

CORPUS = Path(__file__).parent / "corpus"


def regression(target: str, name: str) -> bytes:
    return (CORPUS / target / f"regress-{name}").read_bytes()


def test_a_name_with_a_newline_never_breaks_a_check_report_into_lines() -> None:
    problems = verify_bootstrap(Bootstrap(regression("bootstrap", "newline-in-name")))
    assert problems
    assert all("\n" not in problem for problem in problems), problems
    # The name is shown escaped, so the line still says which entry is wrong.
    assert any("/\\x00 \\x00/\\n\\x08z\\x82\\xd7: file type" in p for p in problems), problems
