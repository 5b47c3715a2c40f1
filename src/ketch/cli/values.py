"""Values the command line takes and prints: sizes, commands."""

from __future__ import annotations

import argparse
import json
import re
import shlex

_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 64K, 1M, 2GiB)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_command(text: str) -> list[str]:
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON array: {exc}") from None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON array of strings")
    return shlex.split(text)


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def report(args: argparse.Namespace, result: object, text: str) -> None:
    """A command's result: as JSON with ``--json``, else the one readable line."""
    print(json.dumps(result, indent=2) if args.json else text)
