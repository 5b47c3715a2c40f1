"""One TOML configuration for the daemon and the tools; command-line options override it.

    /etc/ketch/config.toml, or $KETCH_CONFIG, or --config PATH

Every key is declared below with its type and default; an unknown key or a value of the
wrong type is an error naming the file, the key and what was expected (a typo must not
silently fall back to a default). docs/config.example.toml shows every key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from math import inf
from pathlib import Path
from typing import Any

from ketch.errors import UsageError

DEFAULT_CONFIG_PATH = Path("/etc/ketch/config.toml")
MAX_CONFIG_SIZE = 1 << 20  # bytes of a configuration file read at most


@dataclass(slots=True)
class CacheConfig:
    dir: str = "/var/cache/ketch"  # node-wide chunk cache shared by all mounts
    size: str = "0"  # "10G"; "0": no limit


@dataclass(slots=True)
class PrefetchConfig:
    file: str = ""  # default --prefetch-file for mounts: paths, one per line


@dataclass(slots=True)
class MirrorConfig:
    url: str = ""  # e.g. "http://127.0.0.1:5001": a registry mirror / pull-through cache
    host: str = "*"  # the registry it mirrors ("*": any)


@dataclass(slots=True)
class RegistryConfig:
    docker_config: str = ""  # credentials file; "" means $DOCKER_CONFIG or ~/.docker/config.json
    tls_verify: bool = True
    ca_file: str = ""
    timeout: float = 30.0  # seconds, connect and read
    retries: int = 4
    proxy: str = ""  # HTTP proxy for registry traffic, e.g. "http://127.0.0.1:8888"
    mirrors: list[MirrorConfig] = field(default_factory=list)
    health_check_interval: float = 10.0  # seconds before a failed mirror is tried again


@dataclass(slots=True)
class S3Config:
    endpoint_url: str = ""  # "" means $AWS_ENDPOINT_URL, then AWS's own default
    region: str = ""


@dataclass(slots=True)
class Config:
    cache: CacheConfig = field(default_factory=CacheConfig)
    prefetch: PrefetchConfig = field(default_factory=PrefetchConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    s3: S3Config = field(default_factory=S3Config)


_SECTIONS: dict[str, type[Any]] = {
    "cache": CacheConfig,
    "prefetch": PrefetchConfig,
    "registry": RegistryConfig,
    "s3": S3Config,
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
        default = getattr(kind(), key)
        if key == "mirrors":
            if not isinstance(value, list):
                raise UsageError(f"{where}.mirrors: expected an array of tables")
            values[key] = [
                _build(MirrorConfig, item, f"{where}.mirrors[{i}]") for i, item in enumerate(value)
            ]
            continue
        expected: tuple[type[Any], ...] = (type(default),)
        if isinstance(default, float):
            expected = (float, int)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
            raise UsageError(
                f"{where}.{key}: expected {type(default).__name__}, found "
                f"{type(value).__name__} {_shown(value)}"
            )
        if isinstance(value, int | float) and not isinstance(value, bool) and not 0 <= value < inf:
            raise UsageError(f"{where}.{key}: expected a finite number >= 0, found {value!r}")
        values[key] = value
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
