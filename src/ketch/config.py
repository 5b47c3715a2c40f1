"""Every setting of Ketch, with its default and its range, in one place; and the one TOML
configuration for the daemon and the tools (command-line options override it).

    /etc/ketch/config.toml, or $KETCH_CONFIG, or --config PATH

Each section is a frozen dataclass whose field defaults are *the* defaults, and a test
checks docs/cli.md and docs/config.example.toml against them. A numeric field carries its
range (``Bounds``), checked once, when the file, the command line or a JSON record is
parsed: a value out of range is a ``UsageError`` (exit 2) naming the key.

The settings the file and the command line resolve to are records of their own, passed
whole down the layers: ``StoreOptions`` (how to reach a store; its ``RegistryOptions``
go as they are to the registry client) and ``DaemonConfig`` (one mount daemon, as the
node service's request carries it). ``to_json`` and ``from_json`` turn any of these
dataclasses into JSON values and back, checking types and ranges on the way in; the TOML
file is read by the same ``from_json``.

An unknown key or a value of the wrong type is an error naming the file, the key and what
was expected (a typo must not silently fall back to a default). ``BuildSettings`` holds the
defaults and ranges of the build options, which only the command line sets.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from ketch.errors import UsageError

DEFAULT_CONFIG_PATH = Path("/etc/ketch/config.toml")
MAX_CONFIG_SIZE = 1 << 20  # bytes of a configuration file read at most

T = TypeVar("T")


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


def _like(kind: type[Any], name: str) -> Any:
    """A field with the default and range of the setting ``kind.name`` (one spelling)."""
    spec: Field[Any] = next(f for f in fields(kind) if f.name == name)
    return field(default=spec.default, metadata=spec.metadata)


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
    size: str = field(default="0", metadata={"check": parse_size})  # "10G"; "0": no limit


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


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How to reach a registry: ``[registry]`` and the command line, resolved. The
    timeouts and retries are S3's too. Every default works on loopback."""

    creds: str | None = None  # USER:PASSWORD; else the Docker config's entry
    docker_config: Path | None = None  # a config.json; else $DOCKER_CONFIG or ~/.docker
    tls_verify: bool = True
    ca_file: Path | None = None  # trusted in addition to the system store
    connect_timeout: float = _like(RegistryConfig, "connect_timeout")
    read_timeout: float = _like(RegistryConfig, "timeout")  # between two bytes of an answer
    retries: int = _like(RegistryConfig, "retries")  # attempts after the first
    proxy: str | None = None  # HTTP proxy URL for every request, e.g. http://127.0.0.1:8888
    backoff: float = _ranged(0.5, 0, 3600)  # first wait; doubled each time, with jitter
    max_retry_wait: float = _ranged(30.0, 0, _DAY)  # cap on any one wait, Retry-After included
    chunk_size: int = _ranged(16 << 20, 1, 1 << 40, integer=True)  # uploads above: in pieces


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How to reach a store, as the command line and the configuration say."""

    registry: RegistryOptions = field(default_factory=RegistryOptions)
    mirrors: tuple[str, ...] = ()  # registry mirror URLs for blob reads, tried in order
    health_check_interval: float = _like(RegistryConfig, "health_check_interval")
    s3: S3Config = field(default_factory=S3Config)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """One mount daemon: what `ketch mount` and `ketch run` ask for, and what the node
    service's request carries (``to_json``/``from_json``)."""

    image: str
    mountpoint: Path | None  # None: `ketch run`'s, the image's own or a live mount of it
    cache_dir: Path = Path(CacheConfig().dir)
    cache_size: int = _ranged(0, 0, MAX_SIZE, integer=True)  # bytes; 0: no limit
    api_sock: Path | None = None
    prefetch_file: Path | None = None
    store: StoreOptions = field(default_factory=StoreOptions)


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """How the public Python API (``ketch.open_image``, the fsspec filesystem) reaches and
    reads an image."""

    store: StoreOptions = field(default_factory=StoreOptions)
    # The chunk cache (chunks/ and bootstraps/ under it). None: the node-wide cache of the
    # configuration in force ([cache] dir) if this user can write it, else
    # $XDG_CACHE_HOME/ketch (~/.cache/ketch) if it can be made, else none.
    cache_dir: Path | None = None
    cache: bool = True  # False: no chunk cache at all (chunks are held in memory only)
    cache_size: int = _ranged(0, 0, MAX_SIZE, integer=True)  # bytes; 0: no limit


# -- dataclass <-> JSON ----------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def to_json(value: Any) -> Any:
    """A settings dataclass (or a value in one) as JSON values: paths as strings,
    tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {spec.name: to_json(getattr(value, spec.name)) for spec in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


def from_json(kind: type[T], data: object, where: str) -> T:
    """The ``kind`` dataclass that ``data`` (``to_json``'s output, or a TOML table)
    describes: every value checked against its field's type and range, an unknown key or
    a missing one without a default refused; ``UsageError`` naming ``where`` and the key."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a table, found {type(data).__name__}")
    hints = get_type_hints(kind)
    known = {spec.name: spec for spec in fields(kind)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        spec = known.get(key) if isinstance(key, str) else None
        if spec is None:
            raise UsageError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
        values[key] = _decode(hints[key], value, f"{where}.{key}")
        if values[key] is not None:
            bounds = spec.metadata.get("bounds")
            if isinstance(bounds, Bounds):
                bounds.check(values[key], f"{where}.{key}")
            check: Callable[[Any, str], object] | None = spec.metadata.get("check")
            if check is not None:
                check(values[key], f"{where}.{key}")
    for name, spec in known.items():
        if name not in values and spec.default is MISSING and spec.default_factory is MISSING:
            raise UsageError(f"{where}.{name}: missing")
    return kind(**values)


def _decode(hint: Any, value: object, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin is types.UnionType:  # X | None
        if value is None and type(None) in args:
            return None
        (hint,) = (arg for arg in args if arg is not type(None))
        return _decode(hint, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            what = "tables" if is_dataclass(args[0]) else f"{args[0].__name__} values"
            raise UsageError(f"{where}: expected an array of {what}")
        return tuple(_decode(args[0], item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise UsageError(f"{where}: expected a table")
        return {
            k: v if args[1] is Any else _decode(args[1], v, f"{where}.{k}")
            for k, v in value.items()
        }
    if is_dataclass(hint):
        return from_json(hint, value, where)  # type: ignore[arg-type]
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: expected a path, found {_shown(value)}")
        return Path(value)
    expected: tuple[type[Any], ...] = (float, int) if hint is float else (hint,)
    if isinstance(value, bool) != (hint is bool) or not isinstance(value, expected):
        raise UsageError(
            f"{where}: expected {hint.__name__}, found {type(value).__name__} {_shown(value)}"
        )
    if hint is not float:
        return value
    try:
        return float(value)
    except OverflowError:
        raise UsageError(f"{where}: expected a number, found one too large") from None


_SECTIONS: dict[str, type[Any]] = {
    "cache": CacheConfig,
    "prefetch": PrefetchConfig,
    "registry": RegistryConfig,
    "s3": S3Config,
    "snapshotter": SnapshotterConfig,
}


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
        sections[name] = from_json(kind, table, f"{where}: {name}")
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
