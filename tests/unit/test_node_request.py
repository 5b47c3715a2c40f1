"""The node service's request: a ``DaemonConfig`` as JSON with the client's environment
and working directory, checked once, in the service, before anything forks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketch.config import DaemonConfig, RegistryOptions, StoreOptions, to_json
from ketch.daemon.node_service import _parse_request
from ketch.errors import UsageError


def _body(**changes: object) -> dict[str, object]:
    config = DaemonConfig(
        image="docker://127.0.0.1:5000/app:1",
        mountpoint=Path("/mnt/app"),
        store=StoreOptions(RegistryOptions(creds="u:p", retries=1)),
    )
    body: dict[str, object] = {"daemon": to_json(config), "env": {"HOME": "/root"}, "cwd": "/"}
    body.update(changes)
    return body


def test_a_request_decodes_to_the_config_the_client_sent() -> None:
    request = _parse_request(json.dumps(_body()).encode())
    assert request.daemon.store.registry.creds == "u:p"
    assert request.daemon.mountpoint == Path("/mnt/app")
    assert (request.env, request.cwd) == ({"HOME": "/root"}, "/")


def _daemon_with(**changes: object) -> dict[str, object]:
    return {**to_json(DaemonConfig("oci:/x:t", None)), **changes}


def _registry_with(**changes: object) -> dict[str, object]:
    store = to_json(StoreOptions())
    return _daemon_with(store={**store, "registry": {**store["registry"], **changes}})


@pytest.mark.parametrize(
    ("daemon", "message"),
    [
        # Both were accepted before: "" became Path("."), and the size had no bound.
        (_registry_with(ca_file=""), r"registry\.ca_file: expected a path"),
        (_daemon_with(cache_size=1 << 62), r"cache_size: expected an integer from 0 to"),
        (_registry_with(docker_config=7), r"registry\.docker_config: expected a path"),
        # float() of it raises OverflowError: a usage error too.
        (_registry_with(read_timeout=10**400), r"read_timeout: expected a number"),
    ],
)
def test_values_are_checked_as_the_command_line_checks_them(
    daemon: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        _parse_request(json.dumps(_body(daemon=daemon)).encode())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "node service request: not JSON"),
        (b"[]", "node service request: expected a table"),
        # Raised ValueError, which ended the service (its loop catches KetchError only).
        (b"1" * 5000, "node service request: not JSON"),
        (b"\xff", "node service request: not JSON"),
        (json.dumps(_body(cwd="relative")).encode(), r"request\.cwd: expected an absolute path"),
        (json.dumps(_body(env={"A": 1})).encode(), r"request\.env\.A: expected str"),
        (json.dumps(_body(extra=1)).encode(), r"request\.extra: unknown key"),
        (json.dumps(_body(daemon={})).encode(), r"request\.daemon\.image: missing"),
        (
            json.dumps(
                _body(daemon={**to_json(DaemonConfig("i", None)), "cache_size": -1})
            ).encode(),
            r"request\.daemon\.cache_size: expected an integer",
        ),
    ],
)
def test_a_malformed_request_is_refused_with_one_line(raw: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _parse_request(raw)
