"""The one module that reaches into gevent's (and greenlet's) private or low-level machinery.

Every other module uses gevent's public API (``gevent.Timeout``, ``gevent.spawn``, ``gevent.kill``, events,
``StreamServer``'s public methods) and, where that was measurably too slow or too big, the names below. Each is
pinned by ``tests/test_gevent_fast.py``, so a gevent or greenlet upgrade that moves one fails the test suite, not a
server in production. pyproject.toml bounds gevent below its next major version for the same reason.

What is used, why, and what dropping it would cost (figures from docs/performance.md unless stated):

- :func:`spawn_connection`: a raw greenlet whose parent is the hub, switched to from a loop callback: what
  ``gevent.spawn_raw`` does, minus its greenlet-tree tracking (``spawning_greenlet``, ``spawn_tree_locals`` and
  ``loop`` stored in a per-greenlet dict). Dropping it for ``gevent.spawn_raw``: about 0.15 KB more per idle
  client (tracemalloc, 20,000 waiting greenlets); for ``gevent.spawn``: about 0.7 KB (links, a result slot, the
  captured spawning stack).
- :class:`HandlerGreenlets`: a StreamServer's ``do_handle`` in :func:`spawn_connection` greenlets, calling the
  server's private ``_handle`` and its ``do_close`` from a function of ours instead of gevent's
  ``_handle_and_close_when_done``, whose ``handle(*args)`` (a call Python 3.11 cannot inline) adds a C-level
  interpreter frame to the stack greenlet saves for every idle client (dropping that: see docs/performance.md, idle
  memory per connection); and with greenlets reused: one that has served a client and closed its
  socket parks (up to a bound) and serves the next client accepted, instead of dying. A new greenlet costs more
  than its object: CPython 3.11 maps a fresh 16 KiB chunk for its Python frames on its first run and unmaps it
  when it dies (an ``mmap``, page faults and a ``munmap`` per connection). Dropping it: server CPU per churn
  cycle 0.81x → 1x, about 50 µs more per connection on the loaded 2-core machine (docs/performance.md, item 12).
- :func:`read_watcher` and :func:`wait_readable`: wait for input on the socket's own read watcher
  (``gevent.socket.socket._read_event``, private), by starting it with the greenlet's ``switch`` and switching to
  the hub directly (``greenlet.switch(hub)``, skipping ``Hub.switch``). The server waits *before* ``recv()``,
  which spares the ``recv()`` that would fail with ``EAGAIN`` (and the exception gevent raises and catches for it)
  on every message of a request/reply client. The server's plain-TCP loop goes one step further: it starts the
  watcher once and waits with :data:`switch_to_hub` alone per message, stopping the watcher only around anything
  else that may block. Dropping the wait-first: echo at 100 connections fell from 1.49x to
  0.96x of the minimal gevent server. Dropping only the direct switch for ``hub.wait(watcher)`` (public): a
  ``Waiter`` and more C frames in the stack greenlet saves for every idle client. Dropping only the borrowed
  watcher: one more ``loop.io`` watcher per client (made here when a socket has no ``_read_event``).
- :func:`plain_socket`: the non-blocking stdlib socket inside a gevent socket (its private ``_sock``). After
  :func:`wait_readable` said input is there, the server calls its ``recv()`` and ``send()`` directly and skips
  gevent's Python-level ``recv()``/``send()`` wrappers (a frame, a ``try`` and a timeout lookup each); a send the
  kernel will not take whole, and a spurious wake-up (``BlockingIOError``), fall back to the gevent socket,
  which waits. Dropping it: see docs/performance.md for the figure (echo CPU per reply).
- :func:`call_soon` and :func:`throw`: run a callback on the hub's next loop turn (``loop.run_callback``), and
  from such a callback throw an exception into a suspended greenlet (``greenlet.throw``), as ``gevent.kill`` does.
  The server's graceful shutdown interrupts a connection that waits for input, but only if it still waits when
  the callback runs; ``gevent.kill(glet, exception)`` (public) would throw unconditionally, possibly into a send,
  cutting a reply short. The load tester's reply watchdog throws its timeout into an overdue session from a
  :class:`RepeatingTimer`; the public way, a ``gevent.Timeout`` started and cancelled around every echo, cost about
  as much as checking the reply.
- :class:`RepeatingTimer`: a repeating loop timer (``loop.timer(after, repeat, ref=False)``) that does not keep
  the hub alive. Dropping it: a greenlet looping on ``gevent.sleep``, which does keep the hub alive and has to be
  killed.
- :func:`pause_accepting`: stop a ``StreamServer`` accepting and start again after a delay, with gevent's own
  back-off timer (the private ``_timer`` slot and ``_start_accepting_if_started``), so ``stop_accepting()`` and
  ``close()`` cancel it as they cancel gevent's. Dropping it: a timer of our own plus an override of
  ``stop_accepting`` to cancel it.
- :class:`IdleTimeout`: a ``gevent.Timeout`` whose attributes live in ``__slots__`` named after the private
  attributes ``gevent.Timeout.__init__`` sets. Dropping it for a plain ``gevent.Timeout``: 0.33 KB instead of
  0.19 KB per idle client (its instance dict). An attribute a later gevent adds would go to a dict again: bigger,
  still correct.
"""

from __future__ import annotations

import _socket
from collections.abc import Callable
from typing import Any

import gevent
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket
from greenlet import getcurrent as _current
from greenlet import greenlet as RawGreenlet

__all__ = [
    "HandlerGreenlets",
    "IdleTimeout",
    "RawGreenlet",
    "RepeatingTimer",
    "call_soon",
    "pause_accepting",
    "plain_socket",
    "read_watcher",
    "spawn_connection",
    "switch_to_hub",
    "throw",
    "wait_readable",
]

#: greenlet's own switch, looked up once: ``switch_to_hub(hub)`` skips gevent's Python-level ``Hub.switch`` and so
#: adds no frame to the stack greenlet saves while a client is idle. A caller that keeps a read watcher started
#: with its greenlet's ``switch`` (see :func:`wait_readable`) waits for input with it alone, per message.
switch_to_hub: Callable[[Any], Any] = RawGreenlet.switch
# libev/libuv's event mask for "readable".
_READ = 1


class IdleTimeout(gevent.Timeout):
    """The ``gevent.Timeout`` each connection keeps pending, with its attributes in slots instead of a dict.

    One is pending per connection for as long as the client stays. A plain ``gevent.Timeout`` stores its four
    attributes in the instance ``__dict__`` that BaseException provides (created on the first attribute stored
    outside a slot): 184 bytes of the 0.33 KB per idle client it adds over a bare loop timer, against 0.19 KB with
    slots (docs/performance.md). ``__slots__`` names every attribute ``gevent.Timeout.__init__`` sets, and a test
    pins the list: an attribute a later gevent adds would go to a dict again, bigger but still correct.
    """

    __slots__ = ("_one_shot", "exception", "seconds", "timer")


def spawn_connection(function: Callable[..., object], *args: object) -> RawGreenlet:
    """Start ``function(*args)`` in a raw greenlet on the next loop turn (``gevent.spawn_raw`` without the
    greenlet-tree tracking). A StreamServer's ``spawn``. Kill it with ``gevent.kill``."""
    hub = gevent.get_hub()
    glet = RawGreenlet(function, hub)
    hub.loop.run_callback(glet.switch, *args)
    return glet


class HandlerGreenlets:
    """A StreamServer's ``do_handle`` for short-lived clients: :meth:`spawn` runs the server's handle, then its
    ``do_close``, in a raw greenlet under the hub (:func:`spawn_connection`), and a greenlet that is done with its
    client parks for the next one, keeping at most ``spare`` parked, instead of dying.

    A parked greenlet holds no client: its frame keeps no socket, and nothing else refers to it but this pool. A
    kill that reaches it while parked (``gevent.kill`` of a :class:`~geventchat.server.connection.Connection`'s
    greenlet just after that client left) ends it, and :meth:`spawn` skips it. An exception out of the handle ends
    the greenlet as before (the hub reports it): it is not reused.
    """

    __slots__ = ("_close", "_handle", "_hub", "_parked", "_spare")

    def __init__(self, server: StreamServer, spare: int) -> None:
        self._handle: Callable[[GeventSocket, Any], object] = server._handle
        self._close: Callable[[GeventSocket, Any], object] = server.do_close
        self._spare = spare
        self._parked: list[RawGreenlet] = []
        self._hub = gevent.get_hub()

    @property
    def parked(self) -> int:
        """Greenlets parked now, waiting for a client (dead ones not yet skipped included)."""
        return len(self._parked)

    def spawn(self, sock: GeventSocket, address: Any) -> RawGreenlet:
        """Serve ``sock`` on the hub's next loop turn, in a parked greenlet if there is one, else a new one."""
        parked = self._parked
        glet = None
        while parked:  # bounded by the number parked
            glet = parked.pop()
            if not glet.dead:
                break
            glet = None
        if glet is None:
            return spawn_connection(self._serve_clients, sock, address)
        self._hub.loop.run_callback(glet.switch, sock, address)
        return glet

    def close(self) -> None:
        """No more parking, and end the parked greenlets (each on the hub's next turn, as :func:`gevent.kill` ends a
        raw greenlet): a parked frame refers to this pool and the server's handle, a cycle through a suspended
        greenlet that the garbage collector cannot free, so a stopped server would otherwise live on."""
        self._spare = 0
        parked, self._parked = self._parked, []
        for glet in parked:
            gevent.kill(glet)

    def _serve_clients(self, sock: GeventSocket, address: Any) -> None:
        handle = self._handle
        close = self._close
        parked = self._parked
        hub = self._hub
        while True:  # one client per turn; ends when no spare slot is left (or a kill arrives while parked)
            # Plain positional calls: Python 3.11 runs them in this interpreter loop, not a nested C one.
            try:
                handle(sock, address)
            finally:
                close(sock, address)
            del sock, address  # a parked greenlet must not keep its last client's socket
            if len(parked) >= self._spare:
                return
            parked.append(_current())
            sock, address = switch_to_hub(hub)  # from spawn's callback: glet.switch(sock, address)


def read_watcher(sock: GeventSocket) -> tuple[Any, bool]:
    """A read watcher for :func:`wait_readable` on ``sock``: the socket's own (idle whenever no ``recv()`` of
    ``sock`` waits), or a new one if this gevent has none. Returns ``(watcher, owned)``: close an owned one when
    done with it; never close a borrowed one (the socket closes it)."""
    watcher = getattr(sock, "_read_event", None)
    if watcher is not None:
        return watcher, False
    return gevent.get_hub().loop.io(sock.fileno(), _READ), True


def plain_socket(sock: GeventSocket) -> _socket.socket:
    """The non-blocking stdlib socket a gevent socket wraps (same file descriptor). Its ``recv()`` and ``send()``
    never wait: they raise ``BlockingIOError`` instead. Use it only while ``sock`` is open; close ``sock``, not it."""
    plain: _socket.socket = sock._sock
    return plain


def wait_readable(watcher: Any, wake: Callable[[], object], hub: Any) -> None:
    """Block the calling greenlet until ``watcher`` fires: ``hub.wait(watcher)`` without its Waiter and
    ``Hub.switch``. ``wake`` is the calling greenlet's ``switch`` (taken once by a caller that waits in a loop, so
    no bound method is made per wait). Timers and kills thrown into the greenlet arrive as exceptions from here. A
    stray switch into it also returns (``hub.wait`` would raise): read with a gevent socket's ``recv()``, which
    waits again by itself when nothing is there, or expect ``BlockingIOError`` from a :func:`plain_socket`."""
    watcher.start(wake)
    try:
        switch_to_hub(hub)
    finally:
        watcher.stop()


def call_soon(callback: Callable[[], object]) -> None:
    """Run ``callback()`` in the hub on its next loop turn (where :func:`throw` may be called)."""
    gevent.get_hub().loop.run_callback(callback)


def throw(glet: RawGreenlet, exception: BaseException) -> None:
    """Raise ``exception`` in the suspended greenlet ``glet`` (raw or gevent's), where it switched away, and run it
    until it switches back. Call it from the hub (a :func:`call_soon` or timer callback), as ``gevent.kill`` does:
    from another greenlet, the caller would never be scheduled again."""
    glet.throw(exception)


class RepeatingTimer:
    """Calls ``callback()`` in the hub every ``interval`` seconds until :meth:`close`, without keeping the hub alive
    (a process whose only work is this timer exits). The callback must not block; it may :func:`throw`."""

    def __init__(self, interval: float, callback: Callable[[], object]) -> None:
        self._timer = gevent.get_hub().loop.timer(interval, interval, ref=False)
        self._timer.start(callback)

    def close(self) -> None:
        self._timer.stop()
        self._timer.close()


def pause_accepting(server: StreamServer, seconds: float) -> None:
    """Stop ``server`` accepting now and start again after ``seconds``, unless it is stopped or closed meanwhile.

    Uses gevent's own back-off slot, so ``server.stop_accepting()`` and ``server.close()`` cancel the restart.
    """
    server.stop_accepting()
    server._timer = server.loop.timer(seconds)
    server._timer.start(server._start_accepting_if_started)
