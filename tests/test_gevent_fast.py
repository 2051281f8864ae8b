"""Pins the gevent and greenlet internals :mod:`geventchat._gevent_fast` relies on, so an upgrade that moves one
fails here, by name, and not in a server under load. Each test first checks that the private name is there, then
that it still does what the module's docstring says it is used for."""

from __future__ import annotations

import _socket
import socket
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import pytest
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket
from greenlet import greenlet as RawGreenlet

from geventchat._gevent_fast import (
    HandlerGreenlets,
    IdleTimeout,
    RepeatingTimer,
    call_soon,
    pause_accepting,
    plain_socket,
    read_watcher,
    spawn_connection,
    switch_to_hub,
    throw,
    wait_readable,
)
from geventchat.testing import wait_until


class Interrupted(Exception):
    pass


class TookTooLong(Exception):
    pass


@pytest.fixture
def pair() -> Iterator[tuple[GeventSocket, GeventSocket]]:
    left, right = socket.socketpair()
    reader, writer = GeventSocket(fileno=left.detach()), GeventSocket(fileno=right.detach())
    yield reader, writer
    reader.close()
    writer.close()


def backoff_timer(server: StreamServer) -> Any:
    """The private slot of gevent's accept back-off timer (read through a call: pause_accepting changes it)."""
    return server._timer


def test_the_hub_loop_still_has_the_watchers_and_callbacks_we_use() -> None:
    loop = gevent.get_hub().loop
    assert callable(loop.timer) and callable(loop.io) and callable(loop.run_callback)
    timer = loop.timer(60, 60, ref=False)  # the signature RepeatingTimer calls: after, repeat, ref
    try:
        assert timer.ref is False
    finally:
        timer.close()


def test_a_gevent_socket_still_has_its_own_read_watcher_and_we_borrow_it(pair: tuple[GeventSocket, ...]) -> None:
    reader, _writer = pair
    assert hasattr(reader, "_read_event")
    watcher, owned = read_watcher(reader)
    assert watcher is reader._read_event and not owned  # borrowed: the socket closes it
    assert not watcher.active  # idle while no recv() of the socket waits


def test_a_socket_without_a_read_watcher_gets_one_of_its_own(pair: tuple[GeventSocket, ...]) -> None:
    class Bare:  # as a gevent without _read_event would hand us
        def __init__(self, fileno: int) -> None:
            self._fileno = fileno

        def fileno(self) -> int:
            return self._fileno

    reader, writer = pair
    watcher, owned = read_watcher(Bare(reader.fileno()))
    assert owned and watcher is not reader._read_event
    try:
        writer.sendall(b"x")
        waiter = gevent.spawn(lambda: wait_readable(watcher, gevent.getcurrent().switch, gevent.get_hub()))
        waiter.get(timeout=5)  # returned: our own watcher fired for the byte waiting on the socket
        assert waiter.successful() and not watcher.active
    finally:
        watcher.close()


def test_wait_readable_returns_once_input_arrives_by_a_direct_hub_switch(pair: tuple[GeventSocket, ...]) -> None:
    reader, writer = pair
    watcher, _owned = read_watcher(reader)
    woken = gevent.event.Event()

    def wait() -> bytes:
        wait_readable(watcher, gevent.getcurrent().switch, gevent.get_hub())
        woken.set()
        data: bytes = reader.recv(16)
        return data

    waiter = gevent.spawn(wait)
    gevent.sleep(0)  # let it start waiting
    assert watcher.active and not woken.is_set()  # the situation: blocked in the hub on the socket's watcher
    writer.sendall(b"hello")
    assert waiter.get(timeout=5) == b"hello"
    assert not watcher.active  # stopped again, so the socket's own recv() can use it


def test_a_timeout_arrives_in_wait_readable_as_our_exception(pair: tuple[GeventSocket, ...]) -> None:
    reader, _writer = pair
    watcher, _owned = read_watcher(reader)

    def wait() -> None:
        with gevent.Timeout(0.01, Interrupted):
            wait_readable(watcher, gevent.getcurrent().switch, gevent.get_hub())

    waiter = gevent.spawn(wait)
    waiter.join(timeout=5)
    assert waiter.dead
    assert isinstance(waiter.exception, Interrupted)
    assert not watcher.active


def test_plain_socket_is_the_non_blocking_stdlib_socket_on_the_same_descriptor(
    pair: tuple[GeventSocket, ...],
) -> None:
    reader, writer = pair
    plain = plain_socket(reader)
    assert type(plain) is not GeventSocket and isinstance(plain, _socket.socket)  # gevent's private _sock
    assert plain.fileno() == reader.fileno() and plain.gettimeout() == 0.0  # the same fd, never waiting
    with pytest.raises(BlockingIOError):
        plain.recv(16)  # nothing there: it raises rather than waits (the server falls back to waiting)
    writer.sendall(b"hello")
    watcher, _owned = read_watcher(reader)
    wait_readable(watcher, gevent.getcurrent().switch, gevent.get_hub())
    assert plain.recv(16) == b"hello"
    assert plain_socket(writer).send(b"back") == 4 and reader.recv(16) == b"back"


def test_spawn_connection_runs_a_raw_greenlet_under_the_hub_on_the_next_loop_turn() -> None:
    ran = gevent.event.AsyncResult()
    glet = spawn_connection(lambda a, b: ran.set((a, b, gevent.getcurrent())), 1, 2)
    assert type(glet) is RawGreenlet and glet.parent is gevent.get_hub()  # raw: no Greenlet links, no tree dict
    assert not ran.ready()  # not yet: on the hub's next turn
    assert ran.get(timeout=5) == (1, 2, glet)
    assert glet.dead


@pytest.mark.parametrize("spawn", [spawn_connection, gevent.spawn], ids=["raw greenlet", "gevent Greenlet"])
def test_throw_from_a_loop_callback_lands_where_the_greenlet_waits(spawn: Any) -> None:
    """``throw(glet, instance)`` from the hub, as the shutdown and the load tester's watchdog do, on a raw greenlet
    and on gevent's Greenlet (which overrides ``throw``)."""
    never = gevent.event.Event()
    waiting = gevent.event.Event()
    exception = Interrupted("stop waiting")
    caught = gevent.event.AsyncResult()

    def wait() -> None:
        waiting.set()
        try:
            never.wait(timeout=30)
        except Interrupted as exc:
            caught.set(exc)

    glet = spawn(wait)
    assert waiting.wait(timeout=5)  # the situation: suspended in a wait
    call_soon(lambda: throw(glet, exception))
    assert caught.get(timeout=5) is exception  # the very instance, raised inside the waiting greenlet


def test_repeating_timer_repeats_until_closed() -> None:
    ticks = []
    third = gevent.event.Event()

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 3:
            third.set()

    timer = RepeatingTimer(0.01, tick)
    try:
        assert third.wait(timeout=5)  # the situation: it fired again and again
    finally:
        timer.close()
    count = len(ticks)
    gevent.sleep(0.05)  # five intervals: a live timer would have ticked
    assert len(ticks) == count


def test_pause_accepting_uses_gevents_own_back_off_slot() -> None:
    assert callable(StreamServer._start_accepting_if_started)
    handled = gevent.event.Event()
    server = StreamServer(("127.0.0.1", 0), lambda sock, address: handled.set())
    server.start()
    try:
        assert backoff_timer(server) is None  # the slot gevent's back-off uses, and stop_accepting() clears
        pause_accepting(server, 30)
        assert backoff_timer(server) is not None and backoff_timer(server).active
        with socket.create_connection(server.address, timeout=5):
            # Paused: the client stays in the backlog (accepting, it would be handled within a loop turn).
            assert not handled.wait(timeout=0.1)
            pause_accepting(server, 0.01)  # replaces the long pause: stop_accepting() cancelled its timer
            assert handled.wait(timeout=5)  # the pause over, _start_accepting_if_started accepted it
        pause_accepting(server, 30)
        server.stop_accepting()
        assert backoff_timer(server) is None  # cancelled with it, as gevent's own back-off is
    finally:
        server.stop()


def test_idle_timeout_keeps_no_dict_and_raises_what_it_was_given() -> None:
    with pytest.raises(TookTooLong):
        with IdleTimeout(0.01, TookTooLong) as timeout:
            assert vars(timeout) == {}  # every attribute gevent.Timeout set went to a slot
            gevent.sleep(5)


def test_a_watcher_kept_started_wakes_switch_to_hub_once_per_readiness(pair: tuple[GeventSocket, ...]) -> None:
    """The plain-TCP loop's wait: the watcher started once with the greenlet's switch, then a bare switch to the
    hub per message; each readiness wakes it, and it stays active in between."""
    reader, writer = pair
    watcher, _owned = read_watcher(reader)
    got: list[bytes] = []

    def serve() -> None:
        watcher.start(gevent.getcurrent().switch)
        try:
            while len(got) < 2:  # bounded: two messages
                switch_to_hub(gevent.get_hub())
                got.append(plain_socket(reader).recv(16))
        finally:
            watcher.stop()

    server = gevent.spawn(serve)
    gevent.sleep(0)
    assert watcher.active and not got  # the situation: waiting in the hub, the watcher started once
    writer.sendall(b"one")
    wait_until(lambda: got == [b"one"], timeout=5, what="the first wake-up")
    assert watcher.active  # still started between messages
    writer.sendall(b"two")
    server.join(timeout=5)
    assert got == [b"one", b"two"] and not watcher.active


def _recording_server() -> tuple[StreamServer, list[tuple[GeventSocket, Any]], list[Any]]:
    """A StreamServer (never started) whose handle records each client and the greenlet that served it."""
    served: list[tuple[GeventSocket, Any]] = []
    servers: list[Any] = []

    def handle(sock: GeventSocket, address: Any) -> None:
        served.append((sock, address))
        servers.append(gevent.getcurrent())

    return StreamServer(("127.0.0.1", 0), handle), served, servers


def test_handler_greenlets_serve_the_next_client_in_the_greenlet_the_last_one_left() -> None:
    server, served, servers = _recording_server()
    assert callable(server._handle) and callable(server.do_close)  # the private handle slot and the close hook
    greenlets = HandlerGreenlets(server, spare=4)
    first, second = socket.socketpair()
    third, fourth = socket.socketpair()
    clients = [GeventSocket(fileno=s.detach()) for s in (first, second, third, fourth)]
    try:
        glet = greenlets.spawn(clients[0], ("127.0.0.1", 1))
        assert type(glet) is RawGreenlet and glet.parent is gevent.get_hub()
        wait_until(lambda: greenlets.parked == 1, timeout=5, what="the greenlet to park after its client")
        assert served == [(clients[0], ("127.0.0.1", 1))] and clients[0].closed  # handled, then closed
        assert not glet.dead  # the situation: parked, not ended
        again = greenlets.spawn(clients[2], ("127.0.0.1", 2))
        assert again is glet and greenlets.parked == 0
        wait_until(lambda: len(served) == 2 and greenlets.parked == 1, timeout=5, what="the second client")
        assert served[1] == (clients[2], ("127.0.0.1", 2)) and clients[2].closed
        assert servers == [glet, glet]  # one greenlet served both
        assert glet.gr_frame is not None and "sock" not in glet.gr_frame.f_locals  # keeps no closed socket
    finally:
        for client in clients:
            client.close()


def test_handler_greenlets_park_no_more_than_spare_and_skip_one_killed_while_parked() -> None:
    server, served, servers = _recording_server()
    greenlets = HandlerGreenlets(server, spare=1)
    pairs = [socket.socketpair() for _ in range(2)]
    clients = [GeventSocket(fileno=s.detach()) for pair in pairs for s in pair]
    try:
        one = greenlets.spawn(clients[0], ("127.0.0.1", 1))
        two = greenlets.spawn(clients[2], ("127.0.0.1", 2))  # both made before either runs: two greenlets
        assert one is not two
        wait_until(lambda: len(served) == 2, timeout=5, what="both clients served")
        wait_until(lambda: one.dead or two.dead, timeout=5, what="the greenlet past the spare bound to end")
        assert greenlets.parked == 1  # the bound: one parked, the other ended
        (parked,) = [glet for glet in (one, two) if not glet.dead]
        gevent.kill(parked)  # as a shutdown's kill that lands after its client left
        wait_until(lambda: parked.dead, timeout=5, what="the parked greenlet to end")
        assert greenlets.parked == 1  # the situation: a dead greenlet is still listed
        fresh = greenlets.spawn(clients[1], ("127.0.0.1", 3))
        assert fresh is not parked and not fresh.dead and greenlets.parked == 0  # skipped
        wait_until(lambda: len(served) == 3, timeout=5, what="the third client")
        assert servers[2] is fresh
    finally:
        for client in clients:
            client.close()
