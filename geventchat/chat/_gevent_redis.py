"""redis-py made cooperative under gevent without monkey-patching: the one place that knows which redis-py pieces
would block the whole process, each replaced or avoided for a reason.

- :class:`GeventConnection` opens a :mod:`gevent.socket` socket (``_connect``), so connect, send and receive yield
  to the hub instead of blocking the OS thread.
- Its parser (:class:`_GeventHiredisParser`) waits for readability with :func:`gevent.socket.wait_read`: redis-py's
  hiredis parser polls with :func:`select.poll`, which an unpatched process runs as a blocking system call, so a
  ``can_read(timeout)`` would freeze every greenlet for up to ``timeout``.
- Retries are off (``Retry(NoBackoff(), 0)``): redis-py's default back-off sleeps with :func:`time.sleep`, which
  blocks the hub; the caller (:mod:`geventchat.chat.redis_rooms`) owns reconnection and its back-off.
- Pub/sub does not go through :class:`redis.client.PubSub`: it waits on a :class:`threading.Event` when nothing is
  subscribed, which blocks the hub. The room service drives a plain connection (``SUBSCRIBE`` with
  ``send_command``, messages with ``read_response``) from its one listener greenlet.
- :class:`redis.ConnectionPool` holds a :class:`threading.RLock` only around list operations (never across I/O),
  so greenlets of one thread never wait on it. Its own cap (``max_connections``) raises at once when reached, and
  redis-py's :class:`redis.BlockingConnectionPool` waits on a :class:`queue.Queue` (a blocking lock): so
  :class:`GeventConnectionPool` caps the connections with a gevent semaphore instead, and a burst of room
  operations (a thousand members joining at once) waits its turn rather than failing as "broker unreachable".
"""

from __future__ import annotations

import socket
from typing import Any

import gevent.lock
import gevent.socket
from redis import ConnectionPool
from redis._parsers import _HiredisParser
from redis.backoff import NoBackoff
from redis.connection import Connection, ConnectionInterface
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

__all__ = ["MAX_CONNECTIONS", "GeventConnection", "GeventConnectionPool", "connection_pool"]

#: Connections to Redis one server process opens at most for commands (the pub/sub listener has its own).
MAX_CONNECTIONS = 64


class _GeventHiredisParser(_HiredisParser):
    """The hiredis parser, but a readiness wait with a timeout yields to the hub instead of blocking in poll()."""

    def can_read(self, timeout: float = 0) -> bool:
        sock = getattr(self, "_sock", None)
        if timeout and sock is not None:
            try:
                gevent.socket.wait_read(sock.fileno(), timeout=timeout, timeout_exc=TimeoutError())
            except TimeoutError:
                return False
        # Ready (or no wait asked): the base class checks again without waiting (poll with timeout 0).
        return bool(super().can_read(0))


class GeventConnection(Connection):
    """A redis-py TCP connection over a gevent socket: every wait on the network yields to the hub."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", _GeventHiredisParser)
        kwargs["retry"] = Retry(NoBackoff(), 0)
        super().__init__(**kwargs)

    def _connect(self) -> socket.socket:
        sock: socket.socket = gevent.socket.create_connection(
            (self.host, self.port), timeout=self.socket_connect_timeout
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.socket_keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(self.socket_timeout)
        return sock


class GeventConnectionPool(ConnectionPool):
    """A :class:`redis.ConnectionPool` whose callers, past ``limit`` connections in use, wait (cooperatively, up to
    ``wait`` seconds) for one to be released."""

    def __init__(self, *, limit: int, wait: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self._wait = wait
        self._slots = gevent.lock.BoundedSemaphore(limit)
        self._lent: set[int] = set()  # ids of the connections holding a slot

    def get_connection(self, *args: Any, **options: Any) -> Connection:
        # Arguments (a command name: deprecated since redis-py 5.3, unused by the pool) are not passed on.
        if not self._slots.acquire(timeout=self._wait):
            raise RedisConnectionError(f"all {self.limit} redis connections of this server busy for {self._wait}s")
        try:
            connection: Connection = super().get_connection()
        except BaseException:
            self._slots.release()
            raise
        self._lent.add(id(connection))
        return connection

    def release(self, connection: ConnectionInterface) -> None:
        super().release(connection)  # type: ignore[arg-type]  # redis-py types the interface and the class apart
        if id(connection) in self._lent:  # a connection not lent by get_connection() holds no slot
            self._lent.discard(id(connection))
            self._slots.release()


def connection_pool(url: str, *, timeout: float, limit: int = MAX_CONNECTIONS) -> GeventConnectionPool:
    """A pool of at most ``limit`` :class:`GeventConnection` for ``redis://HOST:PORT/DB``; every connect and every
    reply is bounded by ``timeout`` seconds (a broker that stops answering is an error, not a hang), and so is the
    wait for a free connection."""
    return GeventConnectionPool.from_url(
        url,
        limit=limit,
        wait=timeout,
        max_connections=limit,  # never reached: the semaphore lends at most this many
        connection_class=GeventConnection,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        # RESP2: pub/sub messages are plain replies that read_response() returns; under RESP3 (redis-py 8's
        # default) they are push frames the parser hands to PubSub's handlers, which we do not use.
        protocol=2,
    )
