"""Values the command line takes and prints: sizes, commands."""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable

from ketch.config import Bounds, check_chunk_size
from ketch.config import parse_size as config_size
from ketch.errors import UsageError


def parse_size(text: str) -> int:
    try:
        return config_size(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message.removeprefix("size: ")) from None


def chunk_size(text: str) -> int:
    """An argparse type: a size that is a valid chunk size."""
    try:
        return check_chunk_size(parse_size(text))
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def ranged(bounds: Bounds) -> Callable[[str], float]:
    """An argparse type: a number within ``bounds`` (an int if they say so)."""

    def parse(text: str) -> float:
        try:
            value: float = int(text) if bounds.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {bounds.describe()}, found {text!r}"
            ) from None
        try:
            bounds.check(value, "value")
        except UsageError:
            raise argparse.ArgumentTypeError(
                f"expected {bounds.describe()}, found {text!r}"
            ) from None
        return value

    return parse


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
