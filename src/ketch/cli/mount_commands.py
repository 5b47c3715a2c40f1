"""ketch mount, umount, status and run: the daemon's commands.

FUSE and trio are imported only by the process that serves a mount.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ketch.cli.store_options import store_options
from ketch.cli.values import human_size, report
from ketch.config import DaemonConfig
from ketch.daemon.launcher import service_socket, start_daemon, start_forked, unmount
from ketch.daemon.state import check_cache_dir, default_log_file, mountpoint_path, read_record
from ketch.errors import NotFoundError, UsageError


def _daemon_config(args: argparse.Namespace, mountpoint: Path | None) -> DaemonConfig:
    return DaemonConfig(
        image=args.image,
        mountpoint=mountpoint,
        cache_dir=args.cache_dir,
        cache_size=args.cache_size,
        api_sock=getattr(args, "api_sock", None),
        prefetch_file=args.prefetch_file,
        store=store_options(args, args.config_values),
    )


def cmd_mount(args: argparse.Namespace) -> int:
    mountpoint = mountpoint_path(args.mountpoint)
    check_cache_dir(args.cache_dir)
    config = _daemon_config(args, mountpoint)
    if args.foreground:
        from ketch.daemon.mount_daemon import serve_config  # noqa: PLC0415 - FUSE, trio

        return serve_config(config, args.ready_fd)
    pid = start_daemon(config).pid
    record = read_record(mountpoint)
    result = {
        "mountpoint": str(mountpoint),
        "image": args.image,
        "pid": pid,
        "api_sock": record.api_sock if record else None,
        "log_file": str(default_log_file(mountpoint)),
    }
    report(
        args, result, f"mounted {args.image} at {mountpoint} (pid {pid}, api {result['api_sock']})"
    )
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = mountpoint_path(args.mountpoint)
    record = unmount(mountpoint)
    print(f"unmounted {mountpoint}" + (f" (daemon {record.pid} stopped)" if record else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ketch.daemon.api import api_get  # noqa: PLC0415 - trio

    mountpoint = mountpoint_path(args.mountpoint)
    record = read_record(mountpoint)
    if record is None or not record.alive():
        raise NotFoundError(f"{mountpoint}: no live Ketch mount")
    sock = Path(record.api_sock)
    daemon = json.loads(api_get(sock, "/api/v1/daemon"))
    files = json.loads(api_get(sock, "/api/v1/files"))
    metrics = {}
    for line in api_get(sock, "/metrics").decode().splitlines():
        if line and not line.startswith("#") and "_bucket{" not in line:
            name, value = line.rsplit(" ", 1)  # a labelled series keeps its labels in its name
            metrics[name] = float(value)
    if args.json:
        print(json.dumps({"daemon": daemon, "metrics": metrics, "files": files}, indent=2))
        return 0
    if args.paths:
        for entry in files:
            if entry["path"] is not None:  # None: no directory names it (damaged image)
                print(entry["path"])
        return 0
    mount = daemon["mounts"][0]
    print(f"{mountpoint}: {mount['image']} (pid {daemon['pid']})")
    print(f"  root digest     {mount['root_digest']}")
    print(f"  fetched         {human_size(metrics.get('ketch_backend_read_bytes_total', 0))}")
    print(
        f"  read by users   {human_size(metrics.get('ketch_read_bytes_total', 0))} from {len(files)} files"
    )
    print(
        f"  chunk cache     {int(metrics.get('ketch_cache_hits_total', 0))} hits, "
        f"{int(metrics.get('ketch_cache_misses_total', 0))} misses"
    )
    print(f"  verify failures {int(metrics.get('ketch_chunk_verify_failures_total', 0))}")
    for entry in files[: args.files]:
        print(
            f"    {entry['first_access_ms']:>10.1f} ms  {human_size(entry['bytes_read']):>10}  {entry['path']}"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ketch.daemon.container_run import RunRequest, run_in_image  # noqa: PLC0415 - trio

    check_cache_dir(args.cache_dir)
    request = RunRequest(
        daemon=_daemon_config(args, None),
        args=list(args.command) or None,
        name=args.name,
        remove_mount=args.rm_mount,
    )
    return run_in_image(request)


def cmd_service(args: argparse.Namespace) -> int:
    """ketch service start|stop|status: the node service that starts mount daemons."""
    from ketch.daemon import node_service  # noqa: PLC0415

    sock = str(service_socket())
    if args.action == "start":
        if args.foreground:
            return node_service.serve_node()
        running = node_service.service_pid()
        if running is not None:
            raise UsageError(f"{sock}: a node service is already running (pid {running})")
        pid = start_forked(node_service.serve_node, node_service.service_log_file())
        report(
            args,
            {"state": "running", "pid": pid, "socket": sock},
            f"node service started (pid {pid}, {sock})",
        )
    elif args.action == "stop":
        pid = node_service.stop_service()
        report(
            args,
            {"state": "stopped", "pid": pid, "socket": sock},
            f"node service stopped (pid {pid})",
        )
    else:
        live = node_service.service_pid()
        if live is None:
            report(
                args, {"state": "stopped", "pid": None, "socket": sock}, "node service not running"
            )
            return 3
        report(
            args,
            {"state": "running", "pid": live, "socket": sock},
            f"node service running (pid {live}, {sock})",
        )
    return 0
