"""The blocking shell the comparison backends share: no gevent, no monkey-patching, one flow of control per client.

Each connection is the same short loop as :class:`geventchat.server.connection.Connection` around the same
:class:`~geventchat.protocol.ServerConversation`: wait for input, read, feed, write what the conversation queued.
Where the gevent shell uses a greenlet and a ``gevent.Timeout``, this one uses ``poll()`` on two descriptors:

- the client's socket, with the time left to the idle deadline as the poll timeout. The deadline moves only when a
  complete message arrives (or the timeout is renegotiated), so a client trickling bytes does not extend it;
- a :class:`StopSwitch`, a wake-up pipe (:class:`~geventchat._net.WakePipe`) that becomes readable on
  SIGTERM/SIGINT and stays readable. A thread blocked in ``recv()`` cannot be woken for a graceful shutdown; one
  blocked in ``poll()`` on the switch can. An echo costs three system calls (poll, recv, send), one fewer than with
  ``socket.settimeout()`` (CPython polls before every timed ``recv`` and ``send``), and idle clients wake nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterable

from .._net import ACCEPT_PEER_ERRORS, ACCEPT_RESOURCE_ERRORS, IdleExpired, WakePipe, bind_tcp, linger_close
from ..config import ServerConfig
from ..protocol import CloseReason, ServerConversation, ServerEvent, describe_event, format_peer

__all__ = [
    "StopSwitch",
    "accept_until_stopped",
    "cut_off",
    "listen_until_signalled",
    "reject_full",
    "serve_connection",
]

log = logging.getLogger("geventchat.models")

_POLL_IN = select.POLLIN
_POLL_OUT = select.POLLOUT


class Stopping(Exception):
    """The stop switch was thrown while this connection waited for input."""


class StopSwitch:
    """A level-triggered stop flag that ``poll()`` can wait on next to sockets: a pipe that turns readable once
    :meth:`set` is called or a signal arrives (through :func:`signal.set_wakeup_fd`) and stays readable."""

    def __init__(self) -> None:
        self._pipe = WakePipe()  # never drained: once thrown, the switch stays thrown
        #: Signals received, in order (filled by the handlers :meth:`install_signal_handlers` installs).
        self.signals: list[int] = []

    @property
    def fd(self) -> int:
        """The descriptor to poll for ``POLLIN``."""
        return self._pipe.fileno()

    def set(self) -> None:
        """Throw the switch (idempotent)."""
        self._pipe.wake()

    def install_signal_handlers(self, *, second_exits: bool) -> None:
        """Make SIGTERM and SIGINT throw the switch (call from the main thread). With ``second_exits``, a second
        signal ends the process at once with status 1, as the gevent model does."""

        def on_signal(signum: int, _frame: object) -> None:
            self.signals.append(signum)
            if second_exits and len(self.signals) > 1:
                os._exit(1)

        # The C-level handler writes the signal number into the pipe: every poller wakes, even in other threads.
        self._pipe.catch_signals()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)

    def describe_trigger(self) -> str:
        """``SIGTERM``/``SIGINT`` (the first signal seen), or ``stop requested``."""
        return signal.Signals(self.signals[0]).name if self.signals else "stop requested"

    def close(self) -> None:
        self._pipe.close()


def listen_until_signalled(config: ServerConfig) -> tuple[socket.socket, StopSwitch]:
    """A comparison model's start: its listener on ``config.host:config.port`` (:func:`~geventchat._net.bind_tcp`)
    and a stop switch that SIGTERM/SIGINT throw, a second signal ending the process (call from the main thread).
    Raises :class:`OSError` if the address is unusable, before any handler is installed."""
    listener = bind_tcp(config.host, config.port, backlog=config.backlog)
    stop = StopSwitch()
    stop.install_signal_handlers(second_exits=True)
    return listener, stop


def accept_until_stopped(
    listener: socket.socket,
    stop: StopSwitch,
    handle: Callable[[socket.socket, tuple[str, int]], None],
    *,
    max_accept: int = 64,
    tick: float = 1.0,
    on_tick: Callable[[], None] | None = None,
) -> None:
    """Accept clients from ``listener`` (made by :func:`~geventchat._net.bind_tcp`) and pass each to ``handle``
    until the stop switch is thrown. Up to ``max_accept`` clients are accepted per wake-up; ``on_tick`` (if given)
    runs at least every ``tick`` seconds."""
    listener.setblocking(False)  # a wake-up drains the queue until accept() would block
    poller = select.poll()
    poller.register(listener, _POLL_IN)
    poller.register(stop.fd, _POLL_IN)
    listener_fd = listener.fileno()
    failed_accepts = 0
    next_tick = time.monotonic() + tick
    while True:
        ready = poller.poll(tick * 1000)
        if on_tick is not None and time.monotonic() >= next_tick:
            on_tick()
            next_tick = time.monotonic() + tick
        if any(fd == stop.fd for fd, _ in ready):
            return
        if not any(fd == listener_fd for fd, _ in ready):
            continue
        for _ in range(max_accept):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in ACCEPT_PEER_ERRORS:
                    continue
                if exc.errno not in ACCEPT_RESOURCE_ERRORS:
                    raise
                if failed_accepts == 0:
                    log.warning("accept failed (ours: %s); pausing accepts until resources free up", exc.strerror)
                failed_accepts += 1
                select.select([stop.fd], [], [], 0.1)  # a short back-off that still notices the stop switch
                break
            if failed_accepts:
                log.warning("accepting again after %d failed accepts", failed_accepts)
                failed_accepts = 0
            handle(sock, address)


def reject_full(sock: socket.socket) -> None:
    """Say ``bye: server full`` and close. Unlike the gevent model this does not linger (that would hold the accept
    loop or need a thread per reject): a client that has sent nothing yet still reads the line before the FIN."""
    try:
        sock.setblocking(False)
        sock.send(ServerConversation.reject(CloseReason.SERVER_FULL))
        # No wait, but what already arrived is dropped, so close() does not answer it with a reset.
        linger_close(sock, 0.0)
    except OSError:
        pass
    finally:
        sock.close()


def serve_connection(sock: socket.socket, address: tuple[str, int], config: ServerConfig, stop: StopSwitch) -> str:
    """Serve one client to the end of its conversation and close the socket. Returns why it ended."""
    peer = format_peer(address)
    debug = log.isEnabledFor(logging.DEBUG)
    if debug:
        log.debug("%s connected", peer)
    try:
        reason = _BlockingConnection(sock, peer, config, stop, debug).run()
    except Exception:
        log.exception("internal error serving %s", peer)  # our bug: keep it out of other clients' way
        reason = "internal error"
    finally:
        sock.close()
    if debug:
        log.debug("%s disconnected: %s", peer, reason)
    return reason


class _BlockingConnection:
    """One client's state. ``run()`` is the wait → read → feed → write loop."""

    __slots__ = (
        "_deadline",
        "_poller",
        "_write_cut",
        "config",
        "conversation",
        "debug",
        "peer",
        "sock",
        "stop",
    )

    def __init__(self, sock: socket.socket, peer: str, config: ServerConfig, stop: StopSwitch, debug: bool) -> None:
        self.sock = sock
        self.peer = peer
        self.config = config
        self.stop = stop
        self.debug = debug
        self.conversation = ServerConversation(
            config.protocol, handshake_timeout=config.handshake_timeout, framing_window=config.raw_detect_window
        )
        # The conversation says which timeout is in force (the handshake's, then the idle one) and, in expire(),
        # which one ran out; this shell only keeps the clock.
        self._deadline = time.monotonic() + self.conversation.current_timeout
        self._write_cut = False
        self._poller = select.poll()
        self._poller.register(sock, _POLL_IN)
        self._poller.register(stop.fd, _POLL_IN)

    def run(self) -> str:
        sock = self.sock
        conversation = self.conversation
        recv_size = self.config.recv_size
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._write(conversation.data_to_send())
            while not conversation.closed:
                if not self._wait_for_input(self._deadline):
                    raise IdleExpired()
                data = self._recv(recv_size)
                if data is None:
                    continue
                events = conversation.receive_data(data)
                window = conversation.framing_window
                if window is not None:
                    events += self._detect_framing(window)
                # Any event means a complete line arrived (answered or refused with 'error:'): activity either way.
                if events:
                    self._deadline = time.monotonic() + conversation.current_timeout
                if self.debug:
                    for event in events:
                        log.debug("%s: %s", self.peer, describe_event(event))
                out = conversation.data_to_send()
                if out:
                    self._write(out)
        except IdleExpired:
            conversation.expire()
        except Stopping:
            conversation.close(CloseReason.SHUTDOWN)
        except OSError as exc:
            return f"connection error (peer's side): {exc.strerror or exc}"
        reason = conversation.close_reason
        if reason is CloseReason.PEER_CLOSED:
            return str(reason.value)
        # We are closing: send what is queued (the reply to ':q' or a 'bye:'), then close without a reset.
        queued = conversation.data_to_send()
        if not self._write_cut:  # after a cut write the peer is not reading: no last line to protect
            self._flush_and_linger(queued, self.config.linger)
        return str(reason.value) if reason is not None else "closed"

    def _wait_for_input(self, until: float) -> bool:
        """True once the socket is readable; False when ``until`` (a monotonic time) passes first. Raises
        :class:`Stopping` if the stop switch is thrown first."""
        stop_fd = self.stop.fd
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return False
            ready = self._poller.poll(remaining * 1000)
            if any(fd == stop_fd for fd, _ in ready):
                raise Stopping()
            if ready:
                return True

    def _recv(self, size: int) -> bytes | None:
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            return None  # readiness without data: wait again

    def _detect_framing(self, window: float) -> list[ServerEvent]:
        """Auto framing: bytes without a newline are pending. Wait the window for more; no newline → raw."""
        conversation = self.conversation
        events: list[ServerEvent] = []
        window_end = time.monotonic() + window
        while conversation.awaiting_framing_decision:
            if not self._wait_for_input(min(window_end, self._deadline)):
                if time.monotonic() >= self._deadline:
                    raise IdleExpired()
                events += conversation.settle_framing()
                break
            data = self._recv(self.config.recv_size)
            if data is not None:
                events += conversation.receive_data(data)
        return events

    def _write(self, data: bytes, until: float | None = None) -> bool:
        """Send all of ``data``; a client that does not read for the rest of its idle timeout (or until ``until``)
        gets :class:`IdleExpired` (or ``False``). Returns True when everything was sent."""
        view = memoryview(data)
        writer: select.poll | None = None
        try:
            while view:
                try:
                    sent = self.sock.send(view)
                except BlockingIOError:
                    if writer is None:
                        writer = select.poll()
                        writer.register(self.sock, _POLL_OUT)
                    end = self._deadline if until is None else until
                    remaining = end - time.monotonic()
                    if remaining <= 0 or not writer.poll(remaining * 1000):
                        if until is None:
                            # Part of this reply went out: a bye now would be glued to half a line.
                            self._write_cut = len(view) != len(data)
                            raise IdleExpired() from None
                        return False
                    continue
                view = view[sent:]
        finally:
            view.release()
        return True

    def _flush_and_linger(self, data: bytes, linger: float) -> None:
        """Send the last bytes within ``linger`` seconds, then :func:`~geventchat._net.linger_close` for up to
        ``linger`` more, so our last line is not destroyed by a reset."""
        try:
            sent = self._write(data, until=time.monotonic() + linger)
        except OSError:
            return
        if sent:
            linger_close(self.sock, linger)


def cut_off(sockets: Iterable[socket.socket]) -> None:
    """Shut each socket down in both directions, ignoring errors: whoever waits on it wakes up and closes it (used
    on clients still connected when the grace period ends)."""
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
