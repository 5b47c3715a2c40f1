"""The TOML configuration: defaults, every key of the example, and clear errors."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from ketch.cli.main import build_parser
from ketch.cli.store_options import store_options
from ketch.config import (
    BuildSettings,
    Config,
    RegistryConfig,
    bounds_of,
    load_config,
    parse_config,
)
from ketch.errors import UsageError
from ketch.storage.s3_store import make_client

EXAMPLE = Path(__file__).parents[2] / "docs" / "config.example.toml"


def test_example_parses_to_the_defaults() -> None:
    assert parse_config(EXAMPLE.read_text()) == Config()


def test_values_and_mirrors() -> None:
    config = parse_config(
        """
        [cache]
        size = "10G"
        [registry]
        tls_verify = false
        timeout = 5
        [[registry.mirrors]]
        url = "http://127.0.0.1:5001"
        [[registry.mirrors]]
        url = "http://127.0.0.1:5002"
        host = "docker.io"
        """
    )
    assert config.cache.size == "10G"
    assert config.registry.tls_verify is False
    assert config.registry.timeout == 5
    assert [m.url for m in config.registry.mirrors] == [
        "http://127.0.0.1:5001",
        "http://127.0.0.1:5002",
    ]
    assert config.registry.mirrors[1].host == "docker.io"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cache]\nsise = '1G'\n", "cache.sise: unknown key"),
        ("[cahce]\n", "unknown section"),
        ("[registry]\ntls_verify = 'no'\n", "expected bool, found str"),
        ("[registry]\nretries = true\n", "expected int, found bool"),
        ("[registry]\nmirrors = 'x'\n", "expected an array of tables"),
        ("[[registry.mirrors]]\nurll = 'x'\n", "mirrors[0].urll: unknown key"),
        ("cache = [", "not valid TOML"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text, "test.toml")


def test_load_config_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KETCH_CONFIG", raising=False)
    with pytest.raises(UsageError, match="not found"):
        load_config(tmp_path / "absent.toml")
    path = tmp_path / "k.toml"
    path.write_text("[cache]\ndir = '/srv/cache'\n")
    assert load_config(path).cache.dir == "/srv/cache"
    monkeypatch.setenv("KETCH_CONFIG", str(path))
    assert load_config().cache.dir == "/srv/cache"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[registry]\ntimeout = -5\n", "registry.timeout: expected a number from 0.001 to 86400"),
        ("[registry]\ntimeout = nan\n", "registry.timeout: expected a number"),
        ("[registry]\ntimeout = inf\n", "registry.timeout: expected a number"),
        ("[registry]\ntimeout = 1" + "0" * 400 + "\n", "registry.timeout: expected a number"),
        ("[registry]\nretries = 1" + "0" * 5000 + "\n", "not valid TOML"),
        ("[registry]\nconnect_timeout = 0\n", "registry.connect_timeout: expected"),
        ("[registry]\nretries = -1\n", "registry.retries: expected an integer from 0 to 100"),
        ("[registry]\nhealth_check_interval = -5\n", "registry.health_check_interval"),
        ("[cache]\nsize = 'lots'\n", "cache.size: 'lots' is not a size"),
    ],
)
def test_numbers_out_of_range_are_named(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_config(text, "test.toml")


def test_every_number_has_a_range_that_holds_its_default() -> None:
    for kind in (RegistryConfig, BuildSettings):
        for spec in fields(kind):
            if isinstance(spec.default, int | float) and not isinstance(spec.default, bool):
                bounds_of(kind, spec.name).check(spec.default, f"{kind.__name__}.{spec.name}")


def test_s3_region_reaches_the_client() -> None:
    options = store_options(
        build_parser().parse_args(["inspect", "s3://bucket/prefix:t"]),
        parse_config("[s3]\nregion = 'eu-west-3'\n"),
    )
    assert options.s3.region == "eu-west-3"
    assert (
        make_client("http://127.0.0.1:9", region=options.s3.region).meta.region_name == "eu-west-3"
    )


def test_a_long_wrong_value_is_shown_shortened() -> None:
    with pytest.raises(UsageError) as raised:
        parse_config("[registry]\nproxy = [" + "1, " * 10_000 + "]\n", "test.toml")
    assert raised.value.message.startswith(
        "test.toml: registry.proxy: expected str, found list [1,"
    )
    assert len(raised.value.message) < 200
