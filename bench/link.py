"""A network link emulator: a loopback TCP proxy with set bandwidth and round-trip delay.

``Link(upstream_host, upstream_port)`` listens on a free loopback port and forwards every
connection to the upstream server through an emulated link:

- **bandwidth**: one token bucket per direction, shared by all connections (it is one
  link), refilled at ``bandwidth`` bit/s, holding at most ``burst`` bytes (2 ms of the
  rate, at least 64 KiB, so that the 1 ms granularity of the event loop's timers does
  not eat into the rate). A piece read from a socket waits for its tokens (FIFO across
  connections) before it goes on, so a link busy in one direction serialises its bytes.
- **delay**: every piece is delivered ``rtt / 2`` after it got its tokens, in each
  direction; a new connection first waits one ``rtt`` (the TCP handshake a real link
  would cost, which a loopback ``connect()`` does not).
- **counting**: payload bytes each way (TCP/IP headers not counted), connections, and
  a timeline of HTTP/1.1 exchanges, parsed passively from the client's bytes: method,
  target, ``Range`` header, when the client sent the request, when the first and last
  byte of the response reached the client, and how many bytes it was. A response is
  everything the server sends on the connection until the client's next request
  (HTTP/1.1 without pipelining, as Go's and httpx's clients do).

The proxy runs an asyncio loop in a thread of its own; ``start()`` returns once it
listens, ``stop()`` closes every connection and joins the thread. Bandwidth and delay can
be changed between measurements with ``configure()``. Times are ``time.monotonic()``,
the clock the benchmark and every other process on the machine share.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

from scripts.foreground import Started

DEFAULT_BANDWIDTH = 200e6  # bit/s
DEFAULT_RTT = 0.004  # seconds
_READ = 64 << 10
_MIN_BURST = 64 << 10
_BURST_SECONDS = 0.002
_MAX_HEAD = 64 << 10


@dataclass(slots=True)
class Exchange:
    """One HTTP request on the link and the response the client received."""

    connection: int
    method: str
    target: str
    range: str | None
    #: when the client handed the request to the link (monotonic seconds)
    sent: float
    first_byte: float | None = None
    last_byte: float | None = None
    down_bytes: int = 0

    @property
    def done(self) -> float:
        return self.last_byte if self.last_byte is not None else self.sent

    def to_json(self, origin: float) -> dict[str, object]:
        """As JSON, times in ms after ``origin``."""
        return {
            "method": self.method,
            "target": self.target,
            "range": self.range,
            "connection": self.connection,
            "sent_ms": round((self.sent - origin) * 1000, 2),
            "done_ms": round((self.done - origin) * 1000, 2),
            "bytes": self.down_bytes,
        }


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals since the link started; subtract two to get what happened in between."""

    up_bytes: int
    down_bytes: int
    connections: int
    exchanges: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            self.up_bytes - other.up_bytes,
            self.down_bytes - other.down_bytes,
            self.connections - other.connections,
            self.exchanges - other.exchanges,
        )

    @property
    def total_bytes(self) -> int:
        return self.up_bytes + self.down_bytes


class TokenBucket:
    """``rate`` bytes/s, at most ``burst`` bytes saved up; takers queue in FIFO order."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, nbytes: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            if self._tokens < 0:  # in debt: wait until it is paid back
                await asyncio.sleep(-self._tokens / self.rate)


@dataclass(slots=True)
class _RequestParser:
    """Finds HTTP/1.1 request heads in a client's byte stream (bodies skipped by length)."""

    buffer: bytearray = field(default_factory=bytearray)
    body_left: int = 0
    broken: bool = False

    def feed(self, data: bytes) -> list[tuple[str, str, str | None]]:
        """(method, target, Range header) of each request head completed by ``data``."""
        if self.broken:
            return []
        heads = []
        view = memoryview(data)
        if self.body_left:
            skip = min(self.body_left, len(view))
            self.body_left -= skip
            view = view[skip:]
        self.buffer += view
        while not self.body_left:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self.broken = True
                break
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                self.broken = True
                break
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            heads.append((parts[0], parts[1], headers.get("range")))
            length = int(headers.get("content-length", "0") or 0)
            skip = min(length, len(self.buffer))
            del self.buffer[:skip]
            self.body_left = length - skip
        return heads


class Link(Started["Link"]):
    """The emulated link in front of ``upstream_host:upstream_port`` (see the module doc)."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        bandwidth: float = DEFAULT_BANDWIDTH,
        rtt: float = DEFAULT_RTT,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.bandwidth = bandwidth
        self.rtt = rtt
        self.port = 0
        self._lock = threading.Lock()
        self._up_bytes = 0
        self._down_bytes = 0
        self._connections = 0
        self._exchanges: list[Exchange] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._buckets: tuple[TokenBucket, TokenBucket] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as an image reference names it."""
        return f"127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Link:
        ready: threading.Event = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._buckets = self._new_buckets()
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0)
                )
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=serve, name="link-emulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        if not self.port:
            raise RuntimeError("link emulator: did not start listening within 30 s")
        return self

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        self._loop = self._thread = None

    def configure(self, *, bandwidth: float, rtt: float) -> None:
        """New bandwidth and delay, for connections and pieces from now on (call it between
        measurements: pieces already queued keep their delivery times)."""
        self.bandwidth = bandwidth
        self.rtt = rtt
        loop = self._loop
        if loop is None:
            return

        done = threading.Event()

        def swap() -> None:
            self._buckets = self._new_buckets()
            done.set()

        loop.call_soon_threadsafe(swap)
        done.wait(10)

    def _new_buckets(self) -> tuple[TokenBucket, TokenBucket]:
        rate = self.bandwidth / 8
        burst = max(_MIN_BURST, rate * _BURST_SECONDS)
        return TokenBucket(rate, burst), TokenBucket(rate, burst)

    # -- what went over the link ---------------------------------------------------------

    def counters(self) -> Counters:
        with self._lock:
            return Counters(
                self._up_bytes, self._down_bytes, self._connections, len(self._exchanges)
            )

    def exchanges(self, since: float = 0.0, until: float = float("inf")) -> list[Exchange]:
        """Copies of the exchanges whose request was sent in [since, until]."""
        with self._lock:
            return [
                Exchange(
                    e.connection,
                    e.method,
                    e.target,
                    e.range,
                    e.sent,
                    e.first_byte,
                    e.last_byte,
                    e.down_bytes,
                )
                for e in self._exchanges
                if since <= e.sent <= until
            ]

    # -- the proxy ------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        accepted = time.monotonic()
        with self._lock:
            self._connections += 1
            connection = self._connections
        upstream_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            current: list[Exchange] = []  # the exchange the next response bytes belong to
            pumps = [
                asyncio.create_task(
                    self._pump(reader, upstream_writer, True, connection, accepted, current)
                ),
                asyncio.create_task(
                    self._pump(upstream_reader, writer, False, connection, accepted, current)
                ),
            ]
            # Both directions until EOF, or until one fails (a reset): then drop both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        except OSError:
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        upward: bool,
        connection: int,
        accepted: float,
        current: list[Exchange],
    ) -> None:
        """Copy ``source`` to ``sink`` through one direction of the link."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        parser = _RequestParser() if upward else None
        # Nothing goes through before the emulated handshake is done.
        handshake_done = accepted + self.rtt

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                with self._lock:  # counted before the write: the reader may be quicker
                    if upward:
                        self._up_bytes += len(data)
                    else:
                        self._down_bytes += len(data)
                        if current:
                            exchange = current[0]
                            if exchange.first_byte is None:
                                exchange.first_byte = now
                            exchange.last_byte = now
                            exchange.down_bytes += len(data)
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                with contextlib.suppress(OSError):
                    sink.write_eof()

        delivery = asyncio.ensure_future(deliver())
        try:
            while data := await source.read(_READ):
                now = time.monotonic()
                if parser is not None:
                    for method, target, byte_range in parser.feed(data):
                        exchange = Exchange(connection, method, target, byte_range, now)
                        with self._lock:
                            self._exchanges.append(exchange)
                            current[:] = [exchange]
                buckets = self._buckets
                if buckets is None:
                    raise RuntimeError("link emulator: not started")
                if now < handshake_done:
                    await asyncio.sleep(handshake_done - now)
                await buckets[0 if upward else 1].take(len(data))
                queue.put_nowait((time.monotonic() + self.rtt / 2, data))
        except BaseException:  # a reset or a cancel: what is queued is dropped
            delivery.cancel()
            with contextlib.suppress(BaseException):
                await delivery
            raise
        queue.put_nowait(None)  # EOF: deliver what is queued, then half-close
        await delivery
