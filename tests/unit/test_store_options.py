"""Store options: command line over configuration over defaults; daemons get the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketch.cli.main import build_parser
from ketch.cli.store_options import store_options
from ketch.config import parse_config
from ketch.errors import UsageError
from ketch.storage.open import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    StoreOptions,
)
from ketch.storage.registry.transport import RegistryOptions


def test_open_defaults_are_the_registry_clients() -> None:
    defaults = RegistryOptions()
    assert (defaults.connect_timeout, defaults.read_timeout, defaults.retries) == (
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_READ_TIMEOUT,
        DEFAULT_RETRIES,
    )


def test_command_line_beats_configuration() -> None:
    config = parse_config(
        "[registry]\ntls_verify = false\nretries = 9\n[s3]\nendpoint_url = 'http://s3'\n"
    )
    args = build_parser().parse_args(
        ["convert", "oci:a", "oci:b", "--src-creds", "u:p", "--dest-tls-verify"]
    )
    src = store_options(args, config, "src")
    dest = store_options(args, config, "dest")
    assert (src.creds, src.tls_verify, src.retries, src.endpoint_url) == (
        "u:p",
        False,
        9,
        "http://s3",
    )
    assert (dest.creds, dest.tls_verify) == (None, True)


def test_the_daemon_request_round_trips(tmp_path: Path) -> None:
    options = StoreOptions(
        creds="u:p",
        tls_verify=False,
        ca_file=tmp_path / "ca.pem",
        retries=2,
        read_timeout=7.0,
        endpoint_url="http://s3",
    )
    again = StoreOptions.from_json(json.loads(json.dumps(options.to_json())))
    assert (
        again.creds,
        again.tls_verify,
        again.ca_file,
        again.retries,
        again.read_timeout,
        again.endpoint_url,
    ) == (
        "u:p",
        False,
        tmp_path / "ca.pem",
        2,
        7.0,
        "http://s3",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("read_timeout", -1), ("connect_timeout", float("nan")), ("retries", -3), ("retries", 2.5)],
)
def test_options_from_json_are_checked_against_their_ranges(key: str, value: float) -> None:
    data = StoreOptions().to_json()
    data[key] = value
    with pytest.raises(UsageError, match=f"store options '{key}': expected"):
        StoreOptions.from_json(data)
