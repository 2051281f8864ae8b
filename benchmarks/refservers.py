"""Reference servers speaking the geventchat protocol, written the way people would write them.

greeting line → the client's timeout line (clamped; no reply) → every line echoed with the prefix → ``:q`` echoed,
then close; no complete line within the idle timeout → ``bye: idle timeout`` and close. No framing detection, no
notices for invalid input: these are the baselines geventchat's full protocol is compared against.

Run one: ``python -m benchmarks.refservers NAME [--port 0] [--cpu N]``; it prints
``NAME listening on HOST:PORT`` once it accepts. Entry points may monkey-patch; this one does not need to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Callable

from geventchat._listening import format_listening_line
from geventchat.config import DEFAULT_GREETING, DEFAULT_PREFIX, ProtocolConfig
from geventchat.protocol import BYE_PREFIX, CloseReason

GREETING = DEFAULT_GREETING.encode() + b"\n"
PREFIX = DEFAULT_PREFIX.encode()
# The same protocol limits as geventchat's defaults (the reference servers' bye carries no seconds).
BYE_IDLE = f"{BYE_PREFIX}{CloseReason.IDLE_TIMEOUT.value}\n".encode()
DEFAULT_TIMEOUT = ProtocolConfig.default_timeout
MIN_TIMEOUT = ProtocolConfig.min_timeout
MAX_TIMEOUT = ProtocolConfig.max_timeout
MAX_LINE = ProtocolConfig.max_line
BACKLOG = 4096

#: The reference servers by name (the order reports list them in).
NAMES = ("gevent-minimal", "asyncio-streams", "uvloop-streams", "uvloop-protocol")


def negotiate(line: bytes) -> float:
    """The idle timeout a timeout line asks for, clamped; the default if it is not a positive number."""
    try:
        requested = float(line)
    except ValueError:
        return DEFAULT_TIMEOUT
    if not requested > 0 or requested == float("inf"):
        return DEFAULT_TIMEOUT
    return min(max(requested, MIN_TIMEOUT), MAX_TIMEOUT)


def listener(host: str, port: int) -> socket.socket:
    """A listening IPv4 TCP socket (stdlib, blocking) for a reference server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


# --------------------------------------------------------------------------------------------- gevent minimal


class ClientIdle(Exception):
    """The client sent no complete line within its idle timeout (a reference server says bye and closes)."""


def serve_gevent_minimal(sock: socket.socket, ready: Callable[[], None]) -> None:
    """gevent ``StreamServer``: ``makefile().readline`` with a ``gevent.Timeout`` per read (the tutorial way)."""
    import gevent
    from gevent.server import StreamServer
    from gevent.socket import socket as GeventSocket

    def handle(conn: GeventSocket, _address: object) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        timeout: float | None = None
        try:
            conn.sendall(GREETING)
            while True:
                with gevent.Timeout(timeout or DEFAULT_TIMEOUT, ClientIdle):
                    line = reader.readline(MAX_LINE + 2)
                if not line:
                    return
                text = line.rstrip(b"\r\n")
                if timeout is None:
                    timeout = negotiate(text)
                    continue
                conn.sendall(PREFIX + text + b"\n")
                if text == b":q":
                    return
        except ClientIdle:
            conn.sendall(BYE_IDLE)
        except OSError:
            return
        finally:
            reader.close()

    gsock = GeventSocket(sock.family, sock.type, fileno=sock.detach())
    server = StreamServer(gsock, handle)
    server.start()
    ready()
    server.serve_forever()


# --------------------------------------------------------------------------------------------- asyncio streams


async def _streams_main(sock: socket.socket, ready: Callable[[], None]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timeout: float | None = None
        try:
            writer.write(GREETING)
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), timeout or DEFAULT_TIMEOUT)
                except asyncio.TimeoutError:
                    writer.write(BYE_IDLE)
                    await writer.drain()
                    return
                if not line:
                    return
                text = line.rstrip(b"\r\n")
                if timeout is None:
                    timeout = negotiate(text)
                    continue
                writer.write(PREFIX + text + b"\n")
                await writer.drain()
                if text == b":q":
                    return
        except (OSError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()

    # backlog= matters: start_server(sock=...) calls listen(100) again otherwise.
    server = await asyncio.start_server(handle, sock=sock, backlog=BACKLOG, limit=MAX_LINE + 2)
    ready()
    await server.serve_forever()


# --------------------------------------------------------------------------------------------- uvloop Protocol


class IdleTimedProtocol(asyncio.Protocol):
    """The conversation's frame for a callbacks-only reference: the greeting on connect, and one ``call_later`` per
    connection checked against a deadline that ``data_received`` pushes forward (the idle timeout, with its bye)."""

    __slots__ = ("_buffer", "_deadline", "_handle", "_loop", "_timeout", "transport")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._buffer = b""
        self._timeout: float | None = None
        self.transport: asyncio.Transport | None = None
        self._deadline = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(GREETING)  # type: ignore[union-attr]
        self._deadline = self._loop.time() + DEFAULT_TIMEOUT
        self._handle = self._loop.call_at(self._deadline, self._check)

    def _check(self) -> None:
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        self._handle = None
        if self.transport is not None:
            self.transport.write(BYE_IDLE)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.transport = None


class _EchoProtocol(IdleTimedProtocol):
    """Callbacks only: split lines, answer (the idle timer is :class:`IdleTimedProtocol`'s)."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self._buffer:
            data = self._buffer + data
        *lines, self._buffer = data.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            transport.close()
            return
        if not lines:
            return
        out = []
        for line in lines:
            text = line.rstrip(b"\r")
            if self._timeout is None:
                self._timeout = negotiate(text)
                continue
            out.append(PREFIX + text + b"\n")
            if text == b":q":
                transport.write(b"".join(out))
                transport.close()
                return
        if out:
            transport.write(b"".join(out))
        self._deadline = self._loop.time() + (self._timeout or DEFAULT_TIMEOUT)


async def _protocol_main(sock: socket.socket, ready: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoProtocol, sock=sock, backlog=BACKLOG)
    ready()
    await server.serve_forever()


# --------------------------------------------------------------------------------------------- entry point


def serve(name: str, sock: socket.socket, ready: Callable[[], None]) -> None:
    """Run reference server ``name`` on the listening ``sock`` until killed; ``ready()`` is called once it accepts."""
    if name == "gevent-minimal":
        serve_gevent_minimal(sock, ready)
    elif name == "asyncio-streams":
        asyncio.run(_streams_main(sock, ready))
    elif name == "uvloop-streams":
        import uvloop

        uvloop.run(_streams_main(sock, ready))
    elif name == "uvloop-protocol":
        import uvloop

        uvloop.run(_protocol_main(sock, ready))
    else:
        raise ValueError(f"unknown reference server {name!r}; choose from {', '.join(NAMES)}")


def run_reference(
    argv: list[str] | None,
    *,
    prog: str,
    description: str | None,
    names: tuple[str, ...],
    serve: Callable[[str, socket.socket, Callable[[], None]], None],
) -> int:
    """The command line of a module of reference servers (this one, :mod:`benchmarks.broadcast_refs`): listen,
    print the listening line the runner waits for once ``serve`` says it accepts, run until killed."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("name", choices=names)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    sock = listener(args.host, args.port)
    host, port = sock.getsockname()[:2]

    def ready() -> None:
        print(format_listening_line((host, port), name=args.name), flush=True)

    try:
        serve(args.name, sock, ready)
    except KeyboardInterrupt:
        return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_reference(argv, prog="python -m benchmarks.refservers", description=__doc__, names=NAMES, serve=serve)


if __name__ == "__main__":
    sys.exit(main())
