"""How commands reach stores: registry and S3 options from the command line, defaults
from the configuration file, as one ``StoreOptions``."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ketch.api.options import mirrors_for
from ketch.cli.values import ranged
from ketch.config import Config, RegistryConfig, RegistryOptions, StoreOptions, bounds_of


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def add_store_options(p: argparse.ArgumentParser, *, sides: tuple[str, ...] = ("",)) -> None:
    """skopeo's spellings: --creds, --tls-verify[=false]; with sides, --src-/--dest- ones."""
    group = p.add_argument_group("storage")
    for side in sides:
        label = f"{side.rstrip('-')} " if side else ""
        group.add_argument(
            f"--{side}creds", metavar="USER:PASS", help=f"{label}registry credentials"
        )
        group.add_argument(
            f"--{side}tls-verify",
            type=parse_bool,
            nargs="?",
            const=True,
            metavar="BOOL",
            help=f"verify {label}registry TLS (default: true; loopback registries are plain HTTP)",
        )
    group.add_argument("--ca-file", type=Path, help="extra CA bundle for registry TLS")
    group.add_argument(
        "--docker-config", type=Path, help="credentials file (default: ~/.docker/config.json)"
    )
    defaults = RegistryConfig()
    timeout = bounds_of(RegistryConfig, "timeout")
    retries = bounds_of(RegistryConfig, "retries")
    group.add_argument(
        "--timeout",
        type=ranged(timeout),
        metavar="SECONDS",
        help=f"read timeout, {timeout.span()} (default: [registry] timeout, {defaults.timeout:g}; "
        f"connect: at most {defaults.connect_timeout:g})",
    )
    group.add_argument(
        "--retries",
        type=ranged(retries),
        metavar="N",
        help=f"retries on 429, 5xx and resets, {retries.span()} (default: {defaults.retries})",
    )
    group.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL, then AWS)")
    group.add_argument("--proxy", metavar="URL", help="HTTP proxy for registry traffic")
    group.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="registry mirror for blob reads, tried before the registry (repeatable; "
        "replaces the configuration's [[registry.mirrors]])",
    )
    interval = bounds_of(RegistryConfig, "health_check_interval")
    group.add_argument(
        "--health-check-interval",
        type=ranged(interval),
        metavar="SECONDS",
        help=f"how long a failed mirror is skipped before it is tried again, {interval.span()} "
        f"(default: {defaults.health_check_interval:g})",
    )


def store_options(args: argparse.Namespace, config: Config, side: str = "") -> StoreOptions:
    """``side`` is "src" or "dest" for convert's two stores. Command line first, then the configuration file, then built-in defaults."""
    registry = config.registry
    prefix = f"{side}_" if side else ""
    creds = getattr(args, f"{prefix}creds", None)
    tls_verify = getattr(args, f"{prefix}tls_verify", None)
    timeout = args.timeout if args.timeout is not None else registry.timeout
    docker_config = args.docker_config or (
        Path(registry.docker_config) if registry.docker_config else None
    )
    return StoreOptions(
        registry=RegistryOptions(
            creds=creds,
            tls_verify=registry.tls_verify if tls_verify is None else tls_verify,
            ca_file=args.ca_file or (Path(registry.ca_file) if registry.ca_file else None),
            docker_config=docker_config,
            connect_timeout=min(timeout, registry.connect_timeout),
            read_timeout=timeout,
            retries=args.retries if args.retries is not None else registry.retries,
            proxy=args.proxy or registry.proxy or None,
        ),
        mirrors=tuple(
            args.mirror
            if args.mirror
            else mirrors_for(registry.mirrors, _image_reference(args, side))
        ),
        health_check_interval=(
            args.health_check_interval
            if args.health_check_interval is not None
            else registry.health_check_interval
        ),
        s3=replace(config.s3, endpoint_url=args.endpoint_url or config.s3.endpoint_url),
    )


def _image_reference(args: argparse.Namespace, side: str) -> str | None:
    """The command's image reference on ``side`` (convert has two)."""
    text = getattr(args, {"src": "source", "dest": "dest"}.get(side, "image"), None)
    return text if isinstance(text, str) else None
