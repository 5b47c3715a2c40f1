"""ketch unpack, ketch inspect and ketch check: reading an image back."""

from __future__ import annotations

import argparse
import json
from typing import Any

import ketch
from ketch import Image, ImageOptions
from ketch.cli.progress import progress as make_progress
from ketch.cli.store_options import store_options
from ketch.cli.values import human_size, report


def cmd_unpack(args: argparse.Namespace) -> int:
    with _public_image(args) as image:
        total = image.inspect()["bytes"]
        with make_progress(enabled=None if not args.json else False) as progress:
            task = progress.bytes_task("unpack", total)
            done = image.unpack(args.dest, lambda n: progress.advance_task(task, n))
        result = {
            "reference": image.name,
            "dest": args.dest,
            "files": done.files,
            "bytes": total,
            "fetched_bytes": done.fetched_bytes,
        }
    report(
        args,
        result,
        f"unpacked {result['reference']} to {args.dest}: {done.files} files, {human_size(total)}",
    )
    return 0


def _public_image(args: argparse.Namespace) -> Image:
    """The image of ``args.image`` through the public API (no chunk cache: these commands
    read the bootstrap, or check every blob once)."""
    options = ImageOptions(store=store_options(args, args.config_values), cache=False)
    return ketch.open_image(args.image, options)


def cmd_inspect(args: argparse.Namespace) -> int:
    with _public_image(args) as image:
        return _inspect(args, image)


def _inspect(args: argparse.Namespace, image: Image) -> int:
    if args.path:
        entry = image.inspect(args.path)
        if args.json:
            print(json.dumps(entry, indent=2))
        else:
            _print_entry(entry)
        return 0
    summary = image.inspect()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(summary["reference"])
    print(f"  manifest       {summary['manifest_digest']}")
    print(f"  root digest    {summary['root_digest']}")
    print(
        f"  bootstrap      {summary['bootstrap']['digest']} ({human_size(summary['bootstrap']['size'])})"
    )
    print(f"  chunking       {summary['chunker']}, {human_size(summary['chunk_size'])}")
    print(
        f"  tree           {summary['files']} files, {summary['directories']} directories, "
        f"{summary['symlinks']} symlinks, {summary['other']} other"
    )
    print(
        f"  file data      {human_size(summary['bytes'])} in {summary['chunks']} chunks, "
        f"{summary['unique_chunks']} unique ({human_size(summary['unique_bytes'])})"
    )
    print(
        f"  stored         {human_size(summary['stored_bytes'])} in {len(summary['blobs'])} blobs"
    )
    for blob in summary["blobs"]:
        print(f"    {blob['digest']}  {human_size(blob['size']):>10}  {blob['chunks']} chunks")
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
    with _public_image(args) as image:
        return _check(args, image)


def _check(args: argparse.Namespace, image: Image) -> int:
    with make_progress(enabled=None if not args.json else False) as progress:
        task = progress.bytes_task("check", image.inspect()["unique_bytes"])
        report = image.check(lambda n: progress.advance_task(task, n))
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
            f"{human_size(report.bytes)} verified"
        )
    return 0 if report.ok else 4
