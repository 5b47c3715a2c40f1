"""The ``ketch`` command: parse arguments, call the library, print results. Nothing else."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ketch import __version__
from ketch.builder.chunker import DEFAULT_CHUNK_SIZE
from ketch.builder.image_builder import BuildOptions, BuildSummary, ImageBuilder
from ketch.cli.progress import RichProgress
from ketch.config import DEFAULT_CONFIG_PATH, Config, load_config
from ketch.daemon.launcher import start_detached, unmount
from ketch.daemon.state import DEFAULT_CACHE_DIR, default_log_file, read_record
from ketch.errors import KetchError, NotFoundError, UsageError
from ketch.fs.check import check_image
from ketch.fs.image_fs import ImageFS
from ketch.fs.summary import entry_summary, image_summary
from ketch.fs.unpack import unpack
from ketch.oci.manifest import Platform
from ketch.storage.chunk_reader import ChunkReader
from ketch.storage.ketch_image import KetchImage, open_ketch_image
from ketch.storage.open import open_store

_SIZE = re.compile(r"^(\d+)\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 64K, 1M, 2GiB)")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def _command(text: str) -> list[str]:
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a JSON array: {exc}") from None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise argparse.ArgumentTypeError(f"{text!r}: expected a JSON array of strings")
    return shlex.split(text)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def _open_image(reference: str) -> KetchImage:
    store, tag = open_store(reference)
    return open_ketch_image(store, tag)


# -- build and convert ----------------------------------------------------------------


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chunker",
        choices=("fixed", "cdc"),
        default="fixed",
        help="fixed-size chunks, or content-defined (FastCDC) (default: fixed)",
    )
    p.add_argument(
        "--chunk-size",
        type=parse_size,
        default=DEFAULT_CHUNK_SIZE,
        help="chunk size, a power of two from 4K to 16M (default: 1M)",
    )
    p.add_argument(
        "--compressor",
        choices=("zstd", "lz4", "none"),
        default="zstd",
        help="chunk compressor (default: zstd)",
    )
    p.add_argument("--compression-level", type=int, default=None, help="zstd level (default: 3)")
    p.add_argument(
        "--digest",
        choices=("blake3", "sha256"),
        default="blake3",
        help="chunk and node digest (default: blake3)",
    )
    p.add_argument(
        "--source-date-epoch",
        type=int,
        default=int(os.environ["SOURCE_DATE_EPOCH"])
        if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit()
        else None,
        help="clamp every mtime to at most this time (default: $SOURCE_DATE_EPOCH)",
    )
    p.add_argument(
        "--chunk-dict",
        action="append",
        default=[],
        metavar="IMAGE",
        help="reference chunks already stored in this Ketch image's blobs (repeatable)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="hash/compress threads")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _build_options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        chunker=args.chunker,
        chunk_size=args.chunk_size,
        compressor=args.compressor,
        compression_level=args.compression_level,
        digest=args.digest,
        source_date_epoch=args.source_date_epoch,
        workers=max(1, args.workers),
        chunk_dicts=[_open_image(ref) for ref in args.chunk_dict],
        platform=Platform.parse(args.platform) if getattr(args, "platform", None) else None,
    )


def _print_build(summary: BuildSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_json(), indent=2))
        return
    print(f"{summary.reference}")
    print(f"  manifest    {summary.manifest_digest}")
    print(f"  root        {summary.root_digest}")
    print(f"  bootstrap   {summary.bootstrap_digest} ({_human(summary.bootstrap_size)})")
    for layer in summary.layers:
        stored = f"{layer.blob[:19]} {_human(layer.blob_size)}" if layer.blob else "nothing new"
        print(
            f"  layer {layer.source[:19]:<19}  {_human(layer.file_bytes):>10} in "
            f"{layer.chunks} chunks, {layer.stored_chunks} new -> {stored}"
        )
    ratio = summary.stored_bytes / summary.file_bytes if summary.file_bytes else 0.0
    print(
        f"  {_human(summary.file_bytes)} of file data stored as {_human(summary.stored_bytes)} "
        f"({ratio:.0%}) in {summary.seconds:.1f}s"
    )


def cmd_convert(args: argparse.Namespace) -> int:
    source, source_tag = open_store(args.source)
    dest, dest_tag = open_store(args.dest, create=True)
    options = _build_options(args)
    with RichProgress(enabled=None if not args.json else False) as progress:
        builder = ImageBuilder(dest, options, progress)
        _, source_digest, config = builder.convert(source, source_tag)
        summary = builder.finish(dest_tag, config=config, source_manifest=source_digest)
    _print_build(summary, args.json)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    dest, dest_tag = open_store(args.dest, create=True)
    options = _build_options(args)
    config: dict[str, Any] = {"architecture": "amd64", "os": "linux", "config": {}}
    if args.cmd:
        config["config"]["Cmd"] = args.cmd
    if args.env:
        config["config"]["Env"] = args.env
    if args.workdir:
        config["config"]["WorkingDir"] = args.workdir
    with RichProgress(enabled=None if not args.json else False) as progress:
        builder = ImageBuilder(dest, options, progress)
        builder.add_directory(Path(args.rootfs))
        summary = builder.finish(dest_tag, config=config)
    _print_build(summary, args.json)
    return 0


# -- read it back ---------------------------------------------------------------------


def cmd_unpack(args: argparse.Namespace) -> int:
    image = _open_image(args.image)
    reader = ChunkReader(image.store, image.bootstrap.digest_algorithm)
    fs = ImageFS(image.bootstrap, reader)
    total = image_summary(image)["bytes"]
    with RichProgress(enabled=None if not args.json else False) as progress:
        task = progress.bytes_task("unpack", total)
        files = unpack(fs, Path(args.dest), lambda n: progress.advance_task(task, n))
    result = {
        "reference": image.name,
        "dest": args.dest,
        "files": files,
        "bytes": total,
        "fetched_bytes": reader.backend_bytes,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"unpacked {image.name} to {args.dest}: {files} files, {_human(total)}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    image = _open_image(args.image)
    if args.path:
        entry = entry_summary(image.bootstrap, args.path)
        if args.json:
            print(json.dumps(entry, indent=2))
        else:
            _print_entry(entry)
        return 0
    summary = image_summary(image)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(summary["reference"])
    print(f"  manifest       {summary['manifest_digest']}")
    print(f"  root digest    {summary['root_digest']}")
    print(
        f"  bootstrap      {summary['bootstrap']['digest']} ({_human(summary['bootstrap']['size'])})"
    )
    print(f"  chunking       {summary['chunker']}, {_human(summary['chunk_size'])}")
    print(
        f"  tree           {summary['files']} files, {summary['directories']} directories, "
        f"{summary['symlinks']} symlinks, {summary['other']} other"
    )
    print(
        f"  file data      {_human(summary['bytes'])} in {summary['chunks']} chunks, "
        f"{summary['unique_chunks']} unique ({_human(summary['unique_bytes'])})"
    )
    print(f"  stored         {_human(summary['stored_bytes'])} in {len(summary['blobs'])} blobs")
    for blob in summary["blobs"]:
        print(f"    {blob['digest']}  {_human(blob['size']):>10}  {blob['chunks']} chunks")
    return 0


def _print_entry(entry: dict[str, Any]) -> None:
    for key, value in entry.items():
        if key == "chunks":
            print(f"  chunks ({len(value)}):")
            for chunk in value:
                print(
                    f"    @{chunk['file_offset']:<12} {chunk['size']:>9} B  {chunk['digest'][:16]}  "
                    f"{chunk['blob'][:19]}+{chunk['compressed_offset']} ({chunk['compressed_size']} B)"
                )
        else:
            print(f"  {key:<8} {value}")


def cmd_check(args: argparse.Namespace) -> int:
    image = _open_image(args.image)
    with RichProgress(enabled=None if not args.json else False) as progress:
        task = progress.bytes_task("check", image_summary(image)["unique_bytes"])
        report = check_image(image, lambda n: progress.advance_task(task, n))
    if args.json:
        print(
            json.dumps(
                {
                    "reference": image.name,
                    "ok": report.ok,
                    "blobs": report.blobs,
                    "chunks": report.chunks,
                    "bytes": report.bytes,
                    "problems": report.problems,
                },
                indent=2,
            )
        )
    else:
        for problem in report.problems:
            print(f"FAIL {problem}")
        state = "ok" if report.ok else f"{len(report.problems)} problems"
        print(
            f"{image.name}: {state}: bootstrap and {report.blobs} blobs, {report.chunks} chunks, "
            f"{_human(report.bytes)} verified"
        )
    return 0 if report.ok else 4


# -- mount ----------------------------------------------------------------------------


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="node-wide chunk cache shared by all mounts (default: [cache] dir, "
        f"{DEFAULT_CACHE_DIR})",
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
    if hasattr(args, "cache_dir") and args.cache_dir is None:
        args.cache_dir = Path(config.cache.dir)
    if hasattr(args, "cache_size") and args.cache_size is None:
        try:
            args.cache_size = parse_size(config.cache.size)
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"configuration [cache] size: {exc}") from None
    if hasattr(args, "prefetch_file") and args.prefetch_file is None and config.prefetch.file:
        args.prefetch_file = Path(config.prefetch.file)


def _run_daemon(args: argparse.Namespace, mountpoint: Path) -> int:
    # Imported here: FUSE and trio are loaded only by the process that serves a mount.
    from ketch.daemon.service import DaemonConfig, run_daemon  # noqa: PLC0415

    config = DaemonConfig(
        image=args.image,
        mountpoint=mountpoint,
        cache_dir=args.cache_dir,
        cache_size=args.cache_size,
        api_sock=getattr(args, "api_sock", None),
        prefetch_file=args.prefetch_file,
        ready_fd=getattr(args, "ready_fd", None),
    )
    return run_daemon(config)


def _mount_command(args: argparse.Namespace, mountpoint: Path) -> list[str]:
    """The same mount, as a foreground daemon command line for the launcher."""
    command = [
        sys.executable,
        "-m",
        "ketch.cli.main",
        "mount",
        args.image,
        str(mountpoint),
        "--foreground",
        "--cache-dir",
        str(args.cache_dir),
        "--cache-size",
        str(args.cache_size),
    ]
    if getattr(args, "api_sock", None):
        command += ["--api-sock", str(args.api_sock)]
    if args.prefetch_file:
        command += ["--prefetch-file", str(args.prefetch_file.absolute())]
    return command


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    if args.foreground:
        return _run_daemon(args, mountpoint)
    log_file = default_log_file(mountpoint)
    pid = start_detached(_mount_command(args, mountpoint), log_file)
    record = read_record(mountpoint)
    result = {
        "mountpoint": str(mountpoint),
        "image": args.image,
        "pid": pid,
        "api_sock": record.api_sock if record else None,
        "log_file": str(log_file),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"mounted {args.image} at {mountpoint} (pid {pid}, api {result['api_sock']})")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = Path(args.mountpoint).absolute()
    record = unmount(mountpoint)
    print(f"unmounted {mountpoint}" + (f" (daemon {record.pid} stopped)" if record else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ketch.daemon.api import api_get  # noqa: PLC0415 - see _run_daemon

    mountpoint = Path(args.mountpoint).absolute()
    record = read_record(mountpoint)
    if record is None or not record.alive():
        raise NotFoundError(f"{mountpoint}: no live Ketch mount")
    sock = Path(record.api_sock)
    daemon = json.loads(api_get(sock, "/api/v1/daemon"))
    files = json.loads(api_get(sock, "/api/v1/files"))
    metrics = {}
    for line in api_get(sock, "/metrics").decode().splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            metrics[name] = float(value)
    if args.json:
        print(json.dumps({"daemon": daemon, "metrics": metrics, "files": files}, indent=2))
        return 0
    mount = daemon["mounts"][0]
    print(f"{mountpoint}: {mount['image']} (pid {daemon['pid']})")
    print(f"  root digest     {mount['root_digest']}")
    print(f"  fetched         {_human(metrics.get('ketch_backend_read_bytes_total', 0))}")
    print(
        f"  read by users   {_human(metrics.get('ketch_read_bytes_total', 0))} from {len(files)} files"
    )
    print(
        f"  chunk cache     {int(metrics.get('ketch_cache_hits_total', 0))} hits, "
        f"{int(metrics.get('ketch_cache_misses_total', 0))} misses"
    )
    print(f"  verify failures {int(metrics.get('ketch_chunk_verify_failures_total', 0))}")
    for entry in files[: args.files]:
        print(
            f"    {entry['first_access_ms']:>10.1f} ms  {_human(entry['bytes_read']):>10}  {entry['path']}"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ketch.daemon.container_run import RunRequest, run_in_image  # noqa: PLC0415 - see _run_daemon

    command = list(args.command)
    request = RunRequest(
        image=args.image,
        args=command or None,
        name=args.name,
        remove_mount=args.rm_mount,
        mount_command=lambda mountpoint: _mount_command(args, mountpoint),
    )
    return run_in_image(request)


# -- parser ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("build", help="build a Ketch image from a directory")
    p.add_argument("rootfs", metavar="ROOTFS_DIR")
    p.add_argument("dest", metavar="DEST", help="oci:DIR[:TAG]")
    p.add_argument(
        "--cmd",
        type=_command,
        help='the image\'s default command: a JSON array (\'["/bin/sh","-c","true"]\') or a shell-quoted string',
    )
    p.add_argument(
        "--env", action="append", help="KEY=VALUE for the image's environment (repeatable)"
    )
    p.add_argument("--workdir", help="the image's working directory")
    _add_build_options(p)
    p.set_defaults(run=cmd_build)

    p = sub.add_parser("unpack", help="write a Ketch image's tree to a directory")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_unpack)

    p = sub.add_parser("inspect", help="show what a Ketch image holds, or one entry")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("path", metavar="PATH", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_inspect)

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
    p.set_defaults(run=cmd_mount)

    p = sub.add_parser("run", help="run a container on a lazily mounted Ketch image (runc)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--name", help="container id (default: generated)")
    p.add_argument(
        "--rm-mount", action="store_true", help="unmount afterwards if this run mounted it"
    )
    _add_mount_options(p)
    p.set_defaults(run=cmd_run, command=[])
    p.epilog = "Arguments after -- are the command to run instead of the image's Cmd."

    p = sub.add_parser("status", help="what a live mount fetched and which files were read")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--files", type=int, default=20, metavar="N", help="show the first N files read")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("umount", help="unmount a Ketch mount and stop its daemon")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(run=cmd_umount)

    p = sub.add_parser("check", help="verify the bootstrap and every chunk of every blob")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_check)
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
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        _apply_config(args, load_config(args.config))
        return run(args)
    except KetchError as exc:
        print(f"ketch: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ketch: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"ketch: error: {exc}", file=sys.stderr)
        return 1
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
