"""Store options: command line over configuration over defaults; daemons get the same,
through the one dataclass <-> JSON codec (``config.to_json``/``from_json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ketch.cli.main import build_parser
from ketch.cli.store_options import store_options
from ketch.config import (
    DaemonConfig,
    RegistryConfig,
    RegistryOptions,
    S3Config,
    StoreOptions,
    from_json,
    parse_config,
    to_json,
)
from ketch.errors import UsageError


def test_option_defaults_are_the_configurations() -> None:
    options, config = RegistryOptions(), RegistryConfig()
    assert (options.connect_timeout, options.read_timeout, options.retries) == (
        config.connect_timeout,
        config.timeout,
        config.retries,
    )
    assert StoreOptions().health_check_interval == config.health_check_interval


def test_command_line_beats_configuration() -> None:
    config = parse_config(
        "[registry]\ntls_verify = false\nretries = 9\n[s3]\nendpoint_url = 'http://s3'\n"
    )
    args = build_parser().parse_args(
        ["convert", "oci:a", "oci:b", "--src-creds", "u:p", "--dest-tls-verify"]
    )
    src = store_options(args, config, "src")
    dest = store_options(args, config, "dest")
    assert (src.registry.creds, src.registry.tls_verify, src.registry.retries) == ("u:p", False, 9)
    assert src.s3.endpoint_url == "http://s3"
    assert (dest.registry.creds, dest.registry.tls_verify) == (None, True)


def _daemon(tmp_path: Path) -> DaemonConfig:
    return DaemonConfig(
        image="docker://127.0.0.1:5000/app:1",
        mountpoint=tmp_path / "mnt",
        cache_size=1 << 30,
        prefetch_file=tmp_path / "list",
        store=StoreOptions(
            RegistryOptions(creds="u:p", tls_verify=False, ca_file=tmp_path / "ca.pem", retries=2),
            mirrors=("http://m:1",),
            s3=S3Config(endpoint_url="http://s3", region="eu-west-3"),
        ),
    )


def test_the_daemon_request_round_trips(tmp_path: Path) -> None:
    config = _daemon(tmp_path)
    again = from_json(DaemonConfig, json.loads(json.dumps(to_json(config))), "request")
    assert again == config
    run = DaemonConfig(image="oci:/x:t", mountpoint=None)  # `ketch run`: no mountpoint
    assert from_json(DaemonConfig, to_json(run), "request") == run


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("store", "registry", "read_timeout"),
            -1,
            "request.store.registry.read_timeout: expected",
        ),
        (("store", "registry", "connect_timeout"), float("nan"), "connect_timeout: expected"),
        (("store", "registry", "retries"), -3, "registry.retries: expected an integer"),
        (("store", "registry", "retries"), 2.5, "registry.retries: expected int"),
        (("store", "registry", "tls_verify"), "no", "tls_verify: expected bool"),
        (("store", "mirrors"), "http://m:1", "request.store.mirrors: expected an array"),
        (("store", "registry", "colour"), 1, "registry.colour: unknown key"),
        (("cache_size",), -1, "request.cache_size: expected an integer from 0"),
        (("cache_dir",), "", "request.cache_dir: expected a path"),
        (("image",), None, "request.image: expected str"),
    ],
)
def test_json_is_checked_on_the_way_in(
    tmp_path: Path, path: tuple[str, ...], value: object, message: str
) -> None:
    data: Any = to_json(_daemon(tmp_path))
    table = data
    for key in path[:-1]:
        table = table[key]
    table[path[-1]] = value
    with pytest.raises(UsageError, match=message):
        from_json(DaemonConfig, data, "request")


def test_a_missing_field_without_a_default_is_refused() -> None:
    with pytest.raises(UsageError, match=r"request\.image: missing"):
        from_json(DaemonConfig, {"mountpoint": None}, "request")
