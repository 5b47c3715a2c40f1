"""ketch convert and ketch build."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ketch import BuildOptions, BuildSummary, build, convert, read_prefetch_list
from ketch.cli.progress import progress as make_progress
from ketch.cli.store_options import store_options
from ketch.cli.values import human_size
from ketch.config import build_workers


def _build_options(args: argparse.Namespace) -> BuildOptions:
    return BuildOptions(
        chunker=args.chunker,
        chunk_size=args.chunk_size,
        compressor=args.compressor,
        compression_level=args.compression_level,
        digest=args.digest,
        source_date_epoch=args.source_date_epoch,
        workers=build_workers(args.workers),
        platform=getattr(args, "platform", None) or None,
        prefetch_paths=read_prefetch_list(args.prefetch_list) if args.prefetch_list else [],
    )


def _print_build(summary: BuildSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_json(), indent=2))
        return
    print(f"{summary.reference}")
    print(f"  manifest    {summary.manifest_digest}")
    print(f"  root        {summary.root_digest}")
    print(f"  bootstrap   {summary.bootstrap_digest} ({human_size(summary.bootstrap_size)})")
    for layer in summary.layers:
        stored = f"{layer.blob[:19]} {human_size(layer.blob_size)}" if layer.blob else "nothing new"
        print(
            f"  layer {layer.source[:19]:<19}  {human_size(layer.file_bytes):>10} in "
            f"{layer.chunks} chunks, {layer.stored_chunks} new -> {stored}"
        )
    ratio = summary.stored_bytes / summary.file_bytes if summary.file_bytes else 0.0
    print(
        f"  {human_size(summary.file_bytes)} of file data stored as {human_size(summary.stored_bytes)} "
        f"({ratio:.0%}) in {summary.seconds:.1f}s"
    )


def cmd_convert(args: argparse.Namespace) -> int:
    options = _build_options(args)
    with make_progress(enabled=None if not args.json else False) as progress:
        summary = convert(
            args.source,
            args.dest,
            options,
            source_store=store_options(args, args.config_values, "src"),
            dest_store=store_options(args, args.config_values, "dest"),
            chunk_dicts=args.chunk_dict,
            progress=progress,
        )
    _print_build(summary, args.json)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    options = _build_options(args)
    with make_progress(enabled=None if not args.json else False) as progress:
        summary = build(
            Path(args.rootfs),
            args.dest,
            options,
            cmd=args.cmd or (),
            env=args.env or (),
            workdir=args.workdir,
            dest_store=store_options(args, args.config_values, "dest"),
            chunk_dicts=args.chunk_dict,
            progress=progress,
        )
    _print_build(summary, args.json)
    return 0
