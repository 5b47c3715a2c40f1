"""docs/cli.md and docs/config.example.toml say what ketch.config says: every default and
every range, spelled once in code, is checked here against the docs."""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from ketch.config import (
    BUILD,
    STATUS_FILES,
    STATUS_FILES_BOUNDS,
    Bounds,
    BuildSettings,
    CacheConfig,
    Config,
    RegistryConfig,
    bounds_of,
)

DOCS = Path(__file__).parents[2] / "docs"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _rows() -> dict[str, list[str]]:
    """docs/cli.md's option tables: the option (first word of the first cell) -> cells."""
    rows: dict[str, list[str]] = {}
    for line in (DOCS / "cli.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        match = re.match(r"^`(--[a-z-]+)", cells[0]) if cells else None
        if match:
            rows.setdefault(match.group(1), cells[1:])
    return rows


def _size(n: int) -> str:
    for unit, shift in (("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


RANGED: dict[str, tuple[type[Any], str]] = {
    "--timeout": (RegistryConfig, "timeout"),
    "--retries": (RegistryConfig, "retries"),
    "--health-check-interval": (RegistryConfig, "health_check_interval"),
    "--compression-level": (BuildSettings, "compression_level"),
    "--workers": (BuildSettings, "workers"),
    "--source-date-epoch": (BuildSettings, "source_date_epoch"),
}
PLAIN: dict[str, str] = {
    "--chunker": BUILD.chunker,
    "--compressor": BUILD.compressor,
    "--digest": BUILD.digest,
    "--chunk-size": _size(BUILD.chunk_size),
    "--cache-dir": f"`{CacheConfig().dir}`",
}


@pytest.mark.parametrize("option", sorted(RANGED))
def test_cli_md_gives_each_numbers_default_and_range(option: str) -> None:
    kind, name = RANGED[option]
    default = getattr(kind(), name)
    cells = _rows()[option]
    if default is not None:
        assert cells[0] == _number(default), f"docs/cli.md {option}: default"
    assert cells[1] == bounds_of(kind, name).span(), f"docs/cli.md {option}: range"


@pytest.mark.parametrize("option", sorted(PLAIN))
def test_cli_md_gives_each_default(option: str) -> None:
    assert _rows()[option][0] == PLAIN[option]


def test_cli_md_gives_the_status_default() -> None:
    text = (DOCS / "cli.md").read_text()
    assert f"`--files N`: {STATUS_FILES} by default, {STATUS_FILES_BOUNDS.span()}" in text


def test_the_example_shows_every_key_with_its_default_and_range() -> None:
    text = (DOCS / "config.example.toml").read_text()
    doc = tomllib.loads(text)
    config = Config()
    for section in fields(Config):
        shown = doc[section.name]
        values = getattr(config, section.name)
        expected = {f.name for f in fields(values)} - {"mirrors"}
        assert set(shown) == expected, f"[{section.name}]: keys"
        for spec in fields(values):
            if spec.name == "mirrors":
                continue
            assert spec.default is not MISSING
            assert shown[spec.name] == spec.default, f"[{section.name}] {spec.name}"
            bounds = spec.metadata.get("bounds")
            if isinstance(bounds, Bounds):
                line = next(line for line in text.splitlines() if line.startswith(f"{spec.name} ="))
                assert f"({bounds.span()})" in line, f"[{section.name}] {spec.name}: range"
