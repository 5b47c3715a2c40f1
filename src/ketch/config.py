"""Every setting of Ketch, with its default and its range, in one place; and the one TOML
configuration for the daemon and the tools (command-line options override it).

    /etc/ketch/config.toml, or $KETCH_CONFIG, or --config PATH

Each section is a frozen dataclass whose field defaults are *the* defaults: the command
line, ``StoreOptions``, ``RegistryOptions``, the S3 store and the mirror store import them
from here, and a test checks docs/cli.md and docs/config.example.toml against them. A
numeric field carries its range (``Bounds``), checked once, when the file or the command
line is parsed: a value out of range is a ``UsageError`` (exit 2) naming the key.

An unknown key or a value of the wrong type is an error naming the file, the key and what
was expected (a typo must not silently fall back to a default). ``BuildSettings`` holds the
defaults and ranges of the build options, which only the command line sets.
"""

from __future__ import annotations

import os
import re
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from ketch.errors import UsageError

DEFAULT_CONFIG_PATH = Path("/etc/ketch/config.toml")
MAX_CONFIG_SIZE = 1 << 20  # bytes of a configuration file read at most


@dataclass(frozen=True, slots=True)
class Bounds:
    """The range of a numeric setting, both ends included."""

    low: float
    high: float
    integer: bool = False

    def check(self, value: float, where: str) -> None:
        # NaN compares false both ways, so it never passes.
        if not (self.low <= value <= self.high) or (self.integer and value != int(value)):
            raise UsageError(f"{where}: expected {self.describe()}, found {value!r}")

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return f"{kind} from {_number_text(self.low)} to {_number_text(self.high)}"

    def span(self) -> str:
        """``LOW..HIGH``, as docs/cli.md writes a range."""
        return f"{_number_text(self.low)}..{_number_text(self.high)}"


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _ranged(default: float | None, low: float, high: float, *, integer: bool = False) -> Any:
    return field(default=default, metadata={"bounds": Bounds(low, high, integer)})


def bounds_of(kind: type[Any], name: str) -> Bounds:
    """The range of the numeric setting ``kind.name``."""
    spec: Field[Any] = next(f for f in fields(kind) if f.name == name)
    found = spec.metadata.get("bounds")
    if not isinstance(found, Bounds):
        raise KeyError(f"{kind.__name__}.{name} has no range")
    return found


# -- sizes ---------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = 1 << 60


def parse_size(text: str, where: str = "size") -> int:
    """``1048576``, ``64K``, ``1M``, ``2GiB`` -> bytes; anything else is a ``UsageError``."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"{where}: {text!r} is not a size (e.g. 1048576, 64K, 1M, 2GiB)")
    size = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if size > MAX_SIZE:
        raise UsageError(f"{where}: {text!r}: expected at most 1024P")
    return size


# -- the sections --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheConfig:
    dir: str = "/var/cache/ketch"  # node-wide chunk cache shared by all mounts
    size: str = "0"  # "10G"; "0": no limit (checked by parse_size)


@dataclass(frozen=True, slots=True)
class PrefetchConfig:
    file: str = ""  # default --prefetch-file for mounts: paths, one per line


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    url: str = ""  # e.g. "http://127.0.0.1:5001": a registry mirror / pull-through cache
    host: str = "*"  # the registry it mirrors ("*": any)


_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    docker_config: str = ""  # credentials file; "" means $DOCKER_CONFIG or ~/.docker/config.json
    tls_verify: bool = True
    ca_file: str = ""
    timeout: float = _ranged(30.0, 0.001, _DAY)  # seconds between two bytes of an answer
    connect_timeout: float = _ranged(10.0, 0.001, _DAY)  # at most `timeout`
    retries: int = _ranged(4, 0, 100, integer=True)
    proxy: str = ""  # HTTP proxy for registry traffic, e.g. "http://127.0.0.1:8888"
    mirrors: tuple[MirrorConfig, ...] = ()
    health_check_interval: float = _ranged(10.0, 0, _DAY)  # seconds a failed mirror rests


@dataclass(frozen=True, slots=True)
class S3Config:
    endpoint_url: str = ""  # "" means $AWS_ENDPOINT_URL, then AWS's own default
    region: str = ""  # "" means $AWS_REGION / AWS config files


@dataclass(frozen=True, slots=True)
class SnapshotterConfig:
    address: str = "/run/ketch/snapshotter.sock"  # containerd's [proxy_plugins.ketch] address
    root: str = "/var/lib/ketch/snapshotter"  # snapshot metadata and dirs


@dataclass(frozen=True, slots=True)
class Config:
    cache: CacheConfig = field(default_factory=CacheConfig)
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    s3: S3Config = field(default_factory=S3Config)
    snapshotter: SnapshotterConfig = field(default_factory=SnapshotterConfig)


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """The build options' defaults and ranges (command line only, no TOML section)."""

    chunker: str = "fixed"
    chunk_size: int = _ranged(1 << 20, 4 << 10, 16 << 20, integer=True)  # a power of two
    compressor: str = "zstd"
    compression_level: int = _ranged(3, 1, 22, integer=True)  # zstd's levels
    digest: str = "blake3"
    workers: int = _ranged(0, 0, 1024, integer=True)  # 0: one per CPU
    source_date_epoch: int | None = _ranged(None, 0, 2**63 - 1, integer=True)


BUILD = BuildSettings()


def check_chunk_size(size: int) -> int:
    """``size`` if it is a power of two within ``BuildSettings.chunk_size``'s range."""
    bounds = bounds_of(BuildSettings, "chunk_size")
    if not bounds.low <= size <= bounds.high or size & (size - 1):
        raise UsageError(f"chunk size {size}: expected a power of two from 4 KiB to 16 MiB")
    return size


STATUS_FILES = 20  # `ketch status` shows the first N files read
STATUS_FILES_BOUNDS = Bounds(0, 1 << 31, integer=True)


def build_workers(workers: int) -> int:
    """The thread count ``workers`` asks for (0: one per CPU)."""
    return workers or os.cpu_count() or 2


_SECTIONS: dict[str, type[Any]] = {
    "cache": CacheConfig,
    "prefetch": PrefetchConfig,
    "registry": RegistryConfig,
    "s3": S3Config,
    "snapshotter": SnapshotterConfig,
}


def _build(kind: type[Any], table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise UsageError(f"{where}: expected a table, found {type(table).__name__}")
    known = {f.name: f for f in fields(kind)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        spec = known.get(key)
        if spec is None:
            raise UsageError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        if key == "mirrors":
            if not isinstance(value, list):
                raise UsageError(f"{where}.mirrors: expected an array of tables")
            values[key] = tuple(
                _build(MirrorConfig, item, f"{where}.mirrors[{i}]") for i, item in enumerate(value)
            )
            continue
        default = spec.default
        expected: tuple[type[Any], ...] = (type(default),)
        if isinstance(default, float):
            expected = (float, int)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
            raise UsageError(
                f"{where}.{key}: expected {type(default).__name__}, found "
                f"{type(value).__name__} {_shown(value)}"
            )
        bounds = spec.metadata.get("bounds")
        if isinstance(bounds, Bounds):
            bounds.check(value, f"{where}.{key}")
        if kind is CacheConfig and key == "size":
            parse_size(value, f"{where}.size")
        values[key] = float(value) if isinstance(default, float) else value
    return kind(**values)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def parse_config(text: str, where: str = "config") -> Config:
    # Imported here: most nodes have no configuration file, and every command starts here.
    import tomllib  # noqa: PLC0415

    try:
        doc = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of over 4300 digits
        raise UsageError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:
        raise UsageError(f"{where}: not valid TOML: arrays or tables nested too deep") from None
    sections: dict[str, Any] = {}
    for name, table in doc.items():
        kind = _SECTIONS.get(name)
        if kind is None:
            raise UsageError(f"{where}: unknown section [{name}] (known: {', '.join(_SECTIONS)})")
        sections[name] = _build(kind, table, f"{where}: {name}")
    return Config(**sections)


def config_from_bytes(data: bytes, where: str = "config") -> Config:
    """The configuration a file's bytes hold (TOML is UTF-8)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not valid TOML: not UTF-8 at byte {exc.start}") from None
    return parse_config(text, where)


def load_config(path: Path | None = None) -> Config:
    """The configuration in force: ``path``, else $KETCH_CONFIG, else the default file if
    it exists, else the defaults."""
    explicit = path is not None or "KETCH_CONFIG" in os.environ
    chosen = path or Path(os.environ.get("KETCH_CONFIG", str(DEFAULT_CONFIG_PATH)))
    try:
        with chosen.open("rb") as f:
            data = f.read(MAX_CONFIG_SIZE + 1)
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"{chosen}: configuration file not found") from None
        return Config()
    except OSError as exc:
        raise UsageError(f"{chosen}: cannot read configuration: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_SIZE:
        raise UsageError(f"{chosen}: configuration: expected at most {MAX_CONFIG_SIZE} bytes")
    return config_from_bytes(data, str(chosen))
