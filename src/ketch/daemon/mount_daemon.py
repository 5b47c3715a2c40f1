"""The mount daemon: open the image, mount it with FUSE, serve until unmounted.

Only the manifest and the bootstrap are fetched at mount; chunks come on first read,
through the node-wide chunk cache. The daemon exits when the filesystem is unmounted
(`ketch umount`, or `umount` by hand) or on SIGTERM/SIGINT, unmounting on the way out.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pyfuse3
import trio

from ketch import __version__
from ketch.config import DaemonConfig
from ketch.daemon.access_trace import AccessTrace
from ketch.daemon.api import ApiServer, json_route
from ketch.daemon.fuse_ops import KetchOperations
from ketch.daemon.launcher import Ready, signal_ready
from ketch.daemon.metrics import Counter, Metrics
from ketch.daemon.process import log_to, setup_logging
from ketch.daemon.state import (
    MountRecord,
    claim_image_mount,
    default_api_sock,
    default_log_file,
    is_mounted,
    make_cache_dir,
    mount_device,
    mountpoint_path,
    read_record,
    remove_record,
    write_record,
)
from ketch.errors import KetchError, StorageError, UsageError, local_file_error
from ketch.format.prefetch_list import read_prefetch_list
from ketch.format.records import ChunkRecord
from ketch.fs.image_fs import ImageFS
from ketch.image.ketch_image import KetchImage, open_ketch_image
from ketch.process_identity import process_start
from ketch.storage.cached_reader import CachedChunkReader
from ketch.storage.chunk_cache import ChunkCache
from ketch.storage.chunk_reader import DEFAULT_MAX_MERGE, ChunkReader
from ketch.storage.open import open_store
from ketch.storage.range_plan import RangeRead, plan_prefetch

log = logging.getLogger("ketch.daemon")

_PREFETCH_THREADS = 4  # range reads in flight at once
KERNEL_READAHEAD_KB = 1024
# Miss extension: bytes of the blob after a missed chunk fetched in the same range read.
# 192 KiB measured best for py2's cold start at 200 Mbit/s (2.4 s against 2.8 s with
# 512 KiB, 3.0 s with none), and as good as any at 1 Gbit/s: more bytes per miss cost
# link time, fewer cost round trips.
DEFAULT_MISS_EXTENSION = 192 << 10


class _Daemon:
    def __init__(self, config: DaemonConfig, mountpoint: Path, image: KetchImage) -> None:
        self.config = config
        self.mountpoint = mountpoint
        self.image = image
        self.metrics = Metrics()
        algo = image.bootstrap.digest_algorithm
        self.cache = ChunkCache(
            config.cache_dir / "chunks", config.cache_size, algo, scan_in_background=True
        )
        self.reader = CachedChunkReader(
            ChunkReader(image.store, algo, max_merge=DEFAULT_MAX_MERGE),
            self.cache,
            write_behind=True,
            miss_extension=DEFAULT_MISS_EXTENSION,
        )
        self.fs = ImageFS(image.bootstrap, self.reader)
        self.trace = AccessTrace(self.fs.paths_of)
        self.ops = KetchOperations(self.fs, self.metrics, self.trace)
        self.api_sock = config.api_sock or default_api_sock(mountpoint)

    def daemon_info(self) -> dict[str, object]:
        bootstrap = self.image.bootstrap
        return {
            "state": "running",
            "version": __version__,
            "pid": os.getpid(),
            "mounts": [
                {
                    "mountpoint": str(self.mountpoint),
                    "image": self.config.image,
                    "manifest_digest": self.image.descriptor.digest,
                    "root_digest": f"{bootstrap.digest_algorithm.label}:{bootstrap.root_digest.hex()}",
                    "inodes": bootstrap.inode_count,
                    "cache_dir": str(self.config.cache_dir),
                }
            ],
        }

    def render_metrics(self) -> tuple[str, bytes]:
        """The counters, from one snapshot (``stats()``) of each source."""
        m = self.metrics
        reader, cache = self.reader.stats(), self.cache.stats()
        faults = self.image.store.fault_stats()
        values: list[tuple[Counter, float]] = [
            (m.backend_read_bytes, reader.backend_bytes),
            (m.cache_hits, reader.cache_hits + reader.memory_hits),
            (m.cache_misses, reader.cache_misses),
            (m.verify_failures, self.reader.reader.verify_failures),
            (m.cache_corrupt, cache.corrupt),
            (m.cache_store_errors, cache.store_errors),
            (m.cache_no_space, cache.no_space),
            (m.fetch_timeouts, faults.timeouts),
        ]
        # A store with mirrors counts where its reads went (duck-typed: importing the
        # registry modules here would slow every mount).
        stats = getattr(self.image.store, "stats", None)
        mirror = stats() if callable(stats) else None
        if mirror is not None and hasattr(mirror, "mirror_reads"):
            values += [
                (m.mirror_reads, mirror.mirror_reads),
                (m.origin_fallbacks, mirror.origin_fallbacks),
                (m.mirror_failures, mirror.mirror_failures),
            ]
        m.set(values, [(m.request_retries, faults.retries), (m.request_failures, faults.failures)])
        return "text/plain; version=0.0.4", m.render().encode()

    def prefetch(self, paths: list[str]) -> None:
        """Fetch the listed files' chunks (else those of the image's own prefetch table)
        in list order, as planned by ``plan_prefetch``: small range reads first, larger
        ones after, ``_PREFETCH_THREADS`` of them side by side, all queued at once so the
        link never idles between batches."""
        bootstrap = self.image.bootstrap
        targets: list[str | int] = list(paths) or list(bootstrap.prefetch())
        files: list[list[ChunkRecord]] = []
        file_bytes = 0
        for target in targets:
            try:
                index = self.fs.resolve(target) - 1 if isinstance(target, str) else target
                size = bootstrap.inode(index).size
                files.append([chunk for _, chunk in bootstrap.chunks_for_range(index, 0, size)])
            except KetchError as exc:
                where = target if isinstance(target, str) else f"inode {target + 1}"
                log.warning("prefetch skipped path=%s error=%r", where, exc.message)
                continue
            file_bytes += size
        reads = plan_prefetch(files, self.fs.blobs.refs)
        with ThreadPoolExecutor(_PREFETCH_THREADS, thread_name_prefix="prefetch") as pool:
            for _ in pool.map(self._prefetch_read, reads):
                pass
        self.metrics.add(self.metrics.prefetch_bytes, file_bytes)
        log.info(
            "prefetch done files=%d reads=%d bytes=%d",
            len(files),
            len(reads),
            sum(read.span for read in reads),
        )

    def _prefetch_read(self, read: RangeRead) -> None:
        try:
            self.reader.read(read.blob, read.chunks, extend=False)  # planned exactly
        except KetchError as exc:  # the reader that needs these chunks will say it
            log.warning("prefetch read failed error=%r", exc.message)

    async def serve(self, prefetch: list[str], ready: Callable[[], None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, nursery.cancel_scope)
            nursery.start_soon(self._announce, ready)
            if prefetch or self.image.bootstrap.superblock.prefetch_count:
                # One thread of its own: on-demand reads keep the rest of the pool.
                limiter = trio.CapacityLimiter(1)
                nursery.start_soon(
                    lambda: trio.to_thread.run_sync(self.prefetch, prefetch, limiter=limiter)
                )
            await pyfuse3.main(min_tasks=4, max_tasks=64)
            nursery.cancel_scope.cancel()

    async def _announce(self, ready: Callable[[], None]) -> None:
        """Ready once a stat of the mountpoint is answered by this very daemon: FUSE's
        INIT is done, and the mount is usable by whoever waits for us."""
        await trio.to_thread.run_sync(os.stat, self.mountpoint)
        set_kernel_readahead(self.mountpoint)
        ready()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal %s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return


def _check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.is_dir():
        raise UsageError(f"{mountpoint}: mountpoint is not a directory")
    record = read_record(mountpoint)
    if is_mounted(mountpoint):
        if record is not None and record.alive():
            raise UsageError(f"{mountpoint}: already mounted by ketch (pid {record.pid})")
        raise UsageError(
            f"{mountpoint}: something is mounted there (run ketch umount {mountpoint})"
        )
    if record is not None:
        remove_record(mountpoint)  # left by a daemon that died


def set_kernel_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead one chunk instead of 128 KiB: sequential readers then
    ask for whole chunks, an eighth of the requests for the same bytes. Set once FUSE's
    INIT is answered: INIT caps the readahead at the kernel's proposal, 128 KiB."""
    device = mount_device(mountpoint)
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(KERNEL_READAHEAD_KB))
    except OSError as exc:
        log.warning("kernel readahead not set device=%s error=%r", device, exc.strerror)


def serve_config(config: DaemonConfig, ready_fd: int | None) -> int:
    """The daemon ``config`` asks for, in this process (a fork, or `ketch mount
    --foreground`): serve its mountpoint, or, with none, as `ketch run` needs
    (``_serve_image``). The exit code."""
    setup_logging()
    if config.mountpoint is None:
        return _serve_image(config, ready_fd)
    return run_daemon(config, mountpoint_path(config.mountpoint), ready_fd)


def _serve_image(config: DaemonConfig, ready_fd: int | None) -> int:
    """For `ketch run`: resolve the image and read its config; answer with a live mount
    of the same manifest, or mount the image at its own mountpoint and answer once ready.
    The answer carries the manifest digest and the image config, so the client never
    loads the registry client."""
    try:
        store, tag = open_store(config.image, config.store)
        descriptor, manifest, _ = store.resolve(tag)
        found = Ready(
            pid=os.getpid(),
            mountpoint=Path(),
            manifest_digest=descriptor.digest,
            config=store.read_config(manifest),
        )
        mountpoint, ours = claim_image_mount(descriptor.digest)
        if not ours:
            signal_ready(ready_fd, ready=replace(found, mountpoint=mountpoint, started=False))
            return 0
        log_to(default_log_file(mountpoint))
        image = open_ketch_image(
            store,
            tag,
            cache_dir=make_cache_dir(config.cache_dir) / "bootstraps",
            resolved=(descriptor, manifest),
        )
    except (KetchError, OSError) as exc:
        error = exc if isinstance(exc, KetchError) else local_file_error(exc)
        log.error("mount failed image=%s error=%r", config.image, error.message)
        signal_ready(ready_fd, error)
        return error.exit_code
    return run_daemon(config, mountpoint, ready_fd, image, replace(found, mountpoint=mountpoint))


def run_daemon(
    config: DaemonConfig,
    mountpoint: Path,
    ready_fd: int | None,
    opened: KetchImage | None = None,
    ready: Ready | None = None,
) -> int:
    """Mount ``mountpoint`` (spelled by ``mountpoint_path``) and serve in this process
    until unmounted; the exit code. ``opened`` is the image when the caller has opened it
    already, ``ready`` what to say once ready (else the pid and mountpoint)."""
    api: ApiServer | None = None
    try:
        _check_mountpoint(mountpoint)
        prefetch = read_prefetch_list(config.prefetch_file) if config.prefetch_file else []
        if opened is None:
            store, tag = open_store(config.image, config.store)
            cache_dir = make_cache_dir(config.cache_dir)
            image = open_ketch_image(store, tag, cache_dir=cache_dir / "bootstraps")
        else:
            image = opened
        daemon = _Daemon(config, mountpoint, image)
        # The socket first: anything that can fail does so before the mount exists.
        try:
            api = ApiServer(
                daemon.api_sock,
                {
                    "/api/v1/daemon": json_route(daemon.daemon_info),
                    "/api/v1/files": json_route(daemon.trace.files),
                    "/metrics": daemon.render_metrics,
                },
            )
        except OSError as exc:
            raise StorageError(
                f"{daemon.api_sock}: cannot serve the control API: {exc.strerror}"
            ) from None
        options = set(pyfuse3.default_options) | {
            "fsname=ketch",
            "subtype=ketch",
            "ro",
            "allow_other",
        }
        try:
            pyfuse3.init(daemon.ops, str(mountpoint), options)
        except RuntimeError as exc:
            raise StorageError(f"{mountpoint}: FUSE mount failed: {exc}") from None
    except (KetchError, OSError) as exc:
        error = exc if isinstance(exc, KetchError) else local_file_error(exc)
        log.error("mount failed error=%r", error.message)
        if api is not None:
            api.stop()
        signal_ready(ready_fd, error)
        return error.exit_code
    api.start()
    bootstrap = image.bootstrap
    write_record(
        MountRecord(
            mountpoint=str(mountpoint),
            pid=os.getpid(),
            image=config.image,
            manifest_digest=image.descriptor.digest,
            root_digest=f"{bootstrap.digest_algorithm.label}:{bootstrap.root_digest.hex()}",
            api_sock=str(daemon.api_sock),
            log_file=str(default_log_file(mountpoint)),
            started=process_start(os.getpid()) or 0,
        )
    )
    log.info("mounted image=%s mountpoint=%s api=%s", config.image, mountpoint, daemon.api_sock)
    ready = ready or Ready(pid=os.getpid(), mountpoint=mountpoint)
    unmount = True
    try:
        trio.run(daemon.serve, prefetch, lambda: signal_ready(ready_fd, ready=ready))
    except OSError as exc:
        unmount = exc.errno != errno.ENODEV
    finally:
        # After an external umount the session is gone: closing must not unmount again.
        try:
            pyfuse3.close(unmount=unmount and is_mounted(mountpoint))
        finally:
            api.stop()
            remove_record(mountpoint)
            log.info("unmounted mountpoint=%s", mountpoint)
    return 0
