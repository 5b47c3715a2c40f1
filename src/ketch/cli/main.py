"""The ``ketch`` command: parse arguments, dispatch to a command module, report errors."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ketch import __version__
from ketch.cli.store_options import add_store_options
from ketch.cli.values import chunk_size, human_size, parse_command, parse_size, ranged
from ketch.config import (
    BUILD,
    DEFAULT_CONFIG_PATH,
    STATUS_FILES,
    STATUS_FILES_BOUNDS,
    BuildSettings,
    CacheConfig,
    Config,
    bounds_of,
    load_config,
)
from ketch.config import parse_size as config_size
from ketch.errors import KetchError, local_file_error


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit 2, as every other error of ours."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("ketch").strip()
        self.exit(2, f"ketch: error: {command + ': ' if command else ''}{message}\n")


def _source_date_epoch() -> int | None:
    text = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(text) if text.isdigit() and int(text) < 2**63 else None


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunker",
        choices=("fixed", "cdc"),
        default=BUILD.chunker,
        help=f"fixed-size chunks, or content-defined (FastCDC) (default: {BUILD.chunker})",
    )
    p.add_argument(
        "--chunk-size",
        type=chunk_size,
        default=BUILD.chunk_size,
        help=f"chunk size, a power of two from 4K to 16M (default: {human_size(BUILD.chunk_size)})",
    )
    p.add_argument(
        "--compressor",
        choices=("zstd", "lz4", "none"),
        default=BUILD.compressor,
        help=f"chunk compressor (default: {BUILD.compressor})",
    )
    level = bounds_of(BuildSettings, "compression_level")
    p.add_argument(
        "--compression-level",
        type=ranged(level),
        default=None,
        metavar="N",
        help=f"zstd level, {level.span()} (default: {BUILD.compression_level})",
    )
    p.add_argument(
        "--digest",
        choices=("blake3", "sha256"),
        default=BUILD.digest,
        help=f"chunk and node digest (default: {BUILD.digest})",
    )
    p.add_argument(
        "--source-date-epoch",
        type=ranged(bounds_of(BuildSettings, "source_date_epoch")),
        default=_source_date_epoch(),
        metavar="N",
        help="clamp every mtime to at most this time (default: $SOURCE_DATE_EPOCH)",
    )
    p.add_argument(
        "--chunk-dict",
        action="append",
        default=[],
        metavar="IMAGE",
        help="reference chunks already stored in this Ketch image's blobs (repeatable)",
    )
    p.add_argument(
        "--prefetch-list",
        type=Path,
        metavar="LIST",
        help="files to fetch first after a mount, one path per line (e.g. `ketch status MNT "
        "--paths` of a previous run), stored in the image's prefetch table",
    )
    p.add_argument(
        "--workers",
        type=ranged(bounds_of(BuildSettings, "workers")),
        default=BUILD.workers,
        metavar="N",
        help="hash/compress threads (default: 0, one per CPU)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="node-wide chunk cache shared by all mounts (default: [cache] dir, "
        f"{CacheConfig().dir})",
    )
    p.add_argument(
        "--cache-size",
        type=parse_size,
        help="cache size limit, least recently used chunks evicted (default: [cache] size, "
        "no limit)",
    )
    p.add_argument(
        "--prefetch-file",
        type=Path,
        metavar="LIST",
        help="paths, one per line, to fetch in the background after mount",
    )


def _apply_config(args: argparse.Namespace, config: Config) -> None:
    """Fill options the command line left unset from the configuration file."""
    args.config_values = config
    if hasattr(args, "cache_dir") and args.cache_dir is None:
        args.cache_dir = Path(config.cache.dir)
    if hasattr(args, "cache_size") and args.cache_size is None:
        args.cache_size = config_size(config.cache.size, "configuration [cache] size")
    if hasattr(args, "prefetch_file") and args.prefetch_file is None and config.prefetch.file:
        args.prefetch_file = Path(config.prefetch.file)


# -- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ketch", description="Lazily-loaded, deduplicated, verifiable container images."
    )
    parser.add_argument("--version", action="version", version=f"ketch {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML configuration (default: $KETCH_CONFIG or {DEFAULT_CONFIG_PATH})",
    )
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert an OCI image to a Ketch image")
    p.add_argument("source", metavar="SOURCE", help="oci:DIR[:TAG]")
    p.add_argument("dest", metavar="DEST", help="oci:DIR[:TAG]")
    p.add_argument(
        "--platform", help="OS/ARCH[/VARIANT] to pick from an index (default linux/amd64)"
    )
    _add_build_options(p)
    add_store_options(p, sides=("src-", "dest-"))
    p.set_defaults(run="build_commands:cmd_convert")

    p = sub.add_parser("build", help="build a Ketch image from a directory")
    p.add_argument("rootfs", metavar="ROOTFS_DIR")
    p.add_argument("dest", metavar="DEST", help="oci:DIR[:TAG]")
    p.add_argument(
        "--cmd",
        type=parse_command,
        help='the image\'s default command: a JSON array (\'["/bin/sh","-c","true"]\') or a shell-quoted string',
    )
    p.add_argument(
        "--env", action="append", help="KEY=VALUE for the image's environment (repeatable)"
    )
    p.add_argument("--workdir", help="the image's working directory")
    _add_build_options(p)
    add_store_options(p, sides=("dest-",))
    p.set_defaults(run="build_commands:cmd_build")

    p = sub.add_parser("unpack", help="write a Ketch image's tree to a directory")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--json", action="store_true")
    add_store_options(p)
    p.set_defaults(run="image_commands:cmd_unpack")

    p = sub.add_parser("inspect", help="show what a Ketch image holds, or one entry")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("path", metavar="PATH", nargs="?")
    p.add_argument("--json", action="store_true")
    add_store_options(p)
    p.set_defaults(run="image_commands:cmd_inspect")

    p = sub.add_parser(
        "mount", help="mount a Ketch image read-only with FUSE, chunks loaded on demand"
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_mount_options(p)
    p.add_argument("--api-sock", type=Path, help="control API socket (default: under /run/ketch)")
    p.add_argument("--foreground", action="store_true", help="serve in this process, do not detach")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    add_store_options(p)
    p.set_defaults(run="mount_commands:cmd_mount")

    p = sub.add_parser("run", help="run a container on a lazily mounted Ketch image (runc)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--name", help="container id (default: generated)")
    p.add_argument(
        "--rm-mount", action="store_true", help="unmount afterwards if this run mounted it"
    )
    _add_mount_options(p)
    add_store_options(p)
    p.set_defaults(run="mount_commands:cmd_run", command=[])
    p.epilog = "Arguments after -- are the command to run instead of the image's Cmd."

    p = sub.add_parser("status", help="what a live mount fetched and which files were read")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "--files",
        type=ranged(STATUS_FILES_BOUNDS),
        default=STATUS_FILES,
        metavar="N",
        help=f"show the first N files read (default: {STATUS_FILES})",
    )
    p.add_argument(
        "--paths", action="store_true", help="print only the paths read, in first-access order"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run="mount_commands:cmd_status")

    p = sub.add_parser("umount", help="unmount a Ketch mount and stop its daemon")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(run="mount_commands:cmd_umount")

    p = sub.add_parser(
        "service", help="the node service: starts mount daemons with no start-up cost"
    )
    p.add_argument("action", choices=("start", "stop", "status"))
    p.add_argument(
        "--foreground", action="store_true", help="start: serve in this process (for systemd)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(run="mount_commands:cmd_service")

    p = sub.add_parser("check", help="verify the bootstrap and every chunk of every blob")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true")
    add_store_options(p)
    p.set_defaults(run="image_commands:cmd_check")

    p = sub.add_parser("snapshotter", help="serve containerd's snapshots API (proxy plugin)")
    p.add_argument("--address", type=Path, help="gRPC unix socket (default: [snapshotter] address)")
    p.add_argument(
        "--root", type=Path, help="metadata and snapshot dirs (default: [snapshotter] root)"
    )
    p.set_defaults(run="snapshot_commands:cmd_snapshotter")

    p = sub.add_parser("containerd", help="containerd client commands (remote Ketch snapshots)")
    csub = p.add_subparsers(dest="containerd_command", required=True, metavar="COMMAND")
    p = csub.add_parser("pull", help="pull a Ketch image into containerd, layers as snapshots")
    p.add_argument("image", metavar="IMAGE", help="docker://HOST/REPO:TAG (or HOST/REPO:TAG)")
    p.add_argument(
        "--address",
        type=Path,
        default=Path("/run/containerd/containerd.sock"),
        help="containerd's socket (default: /run/containerd/containerd.sock)",
    )
    p.add_argument("--namespace", default="default", help="containerd namespace (default: default)")
    p.add_argument("--snapshotter", default="ketch", help="snapshotter name (default: ketch)")
    p.add_argument("--json", action="store_true")
    add_store_options(p)
    p.set_defaults(run="snapshot_commands:cmd_containerd_pull")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is a container command (ketch run), never our options.
    command: list[str] = []
    if "--" in argv:
        command = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = parser.parse_args(argv)
    if command:
        if args.command_name != "run":
            parser.error("arguments after -- are only for ketch run")
        args.command = command
    module, _, function = args.run.partition(":")
    try:
        # Each command's module is imported only when it runs: `ketch mount` never loads
        # the builder, `ketch convert` never loads FUSE.
        run: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"ketch.cli.{module}"), function
        )
        _apply_config(args, load_config(args.config))
        return run(args)
    except KetchError as exc:
        print(f"ketch: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ketch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output has gone (`ketch inspect ... | head`): stop quietly, as
        # a shell tool killed by SIGPIPE would, and keep Python from complaining at exit.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        # Not raised as a KetchError where it happened: a local path, named with the reason.
        error = local_file_error(exc)
        print(f"ketch: error: {error.message}", file=sys.stderr)
        return error.exit_code
    except Exception as exc:  # a bug: one line unless asked for the traceback
        if os.environ.get("KETCH_DEBUG"):
            traceback.print_exc()
        print(
            f"ketch: internal error: {type(exc).__name__}: {exc} (set KETCH_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
