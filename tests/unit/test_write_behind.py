"""The background cache writer: order, the byte bound, waiting, and its lower priority."""

from __future__ import annotations

import os
import threading

from ketch.storage.write_behind import WriteBehind


def test_offers_are_stored_in_order_and_wait_sees_them_all() -> None:
    stored: list[bytes] = []
    writer = WriteBehind(lambda digest, data: stored.append(digest), limit=1 << 20)
    digests = [bytes([i]) * 32 for i in range(50)]
    for digest in digests:
        assert writer.offer(digest, b"x" * 100)
    assert writer.wait(timeout=10)
    assert stored == digests
    assert writer.pending_bytes == 0


def test_an_offer_past_the_limit_is_refused_until_the_writer_catches_up() -> None:
    release = threading.Event()
    started = threading.Event()

    def store(digest: bytes, data: bytes) -> None:
        started.set()
        release.wait(10)

    writer = WriteBehind(store, limit=1000)
    assert writer.offer(b"a" * 32, b"x" * 600)
    assert started.wait(10)  # being written: still counted
    assert writer.offer(b"b" * 32, b"x" * 400)
    assert not writer.offer(b"c" * 32, b"x" * 1)  # 1,001 bytes pending would pass 1,000
    assert writer.pending_bytes == 1000
    assert not writer.wait(timeout=0.05)
    release.set()
    assert writer.wait(timeout=10)
    assert writer.offer(b"c" * 32, b"x" * 1)
    assert writer.wait(timeout=10)


def test_a_chunk_bigger_than_the_limit_passes_when_nothing_is_pending() -> None:
    stored: list[int] = []
    writer = WriteBehind(lambda digest, data: stored.append(len(data)), limit=10)
    assert writer.offer(b"a" * 32, b"x" * 100)  # else it could never be stored this way
    assert writer.wait(timeout=10)
    assert stored == [100]


def test_a_failing_store_does_not_stop_the_writer() -> None:
    stored: list[bytes] = []

    def store(digest: bytes, data: bytes) -> None:
        if digest == b"bad" * 8:
            raise RuntimeError("disk on fire")
        stored.append(digest)

    writer = WriteBehind(store, limit=1 << 20)
    assert writer.offer(b"bad" * 8, b"x")
    assert writer.offer(b"good" * 8, b"x")
    assert writer.wait(timeout=10)
    assert stored == [b"good" * 8]


def test_the_writer_runs_at_a_lower_priority_than_its_creator() -> None:
    seen: list[int] = []
    writer = WriteBehind(
        lambda digest, data: seen.append(os.getpriority(os.PRIO_PROCESS, 0)), limit=100, nice=5
    )
    assert writer.offer(b"a" * 32, b"x")
    assert writer.wait(timeout=10)
    assert seen == [min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)]
