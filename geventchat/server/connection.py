"""One client's connection, in its own greenlet: open (TLS, the greeting), converse (read → feed → write under the
idle timeout), close (the last line, then a lingering close).

The conversation itself is :class:`~geventchat.protocol.ServerConversation`; this module moves its bytes and keeps
its time. What ends a conversation early (a timeout, a shutdown, a broken connection, a TLS failure) is mapped to
how it is closed in one table, :data:`_ENDINGS`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent.lock import Semaphore
from gevent.socket import socket as GeventSocket

from .._gevent_fast import (
    IdleTimeout,
    RawGreenlet,
    call_soon,
    plain_socket,
    read_watcher,
    switch_to_hub,
    throw,
    wait_readable,
)
from .._net import IdleExpired, linger_close, unread_bytes
from ..chat.rooms import RoomService
from ..config import ServerConfig
from ..protocol import CloseReason, ServerConversation, ServerEvent, describe_event, format_peer
from ..stats import RESET, TLS_ERROR, ServerStats
from .chat import ChatMember
from .interrupts import IdleAlarm, ShutdownRequested, TooSlow, _LingerOver, _TLSHandshakeExpired, _WindowOver

__all__ = ["Connection", "Host", "IdleAlarm", "ShutdownRequested", "TooSlow"]

# The gevent shell logs under one name, whichever of its modules speaks (operators filter on it).
log = logging.getLogger("geventchat.server")

# Connection._armed_for while the handshake timeout runs: differs from every idle timeout, so the first events
# after the handshake re-arm the connection's Timeout for the negotiated idle timeout.
_IN_HANDSHAKE = -1.0

# Elsewhere than Linux an accepted socket may not inherit the listener's TCP_NODELAY: set it per connection there.
_NODELAY_PER_SOCKET = not sys.platform.startswith("linux")


class Host(Protocol):
    """What a connection needs of its server (:class:`~geventchat.server.ChatServer` is one)."""

    config: ServerConfig
    stats: ServerStats
    #: The server's TLS context, or None for plain TCP.
    tls: ssl.SSLContext | None
    #: Where rooms live, or None with chat off.
    rooms: RoomService | None


#: How a conversation that ended early closes: with a :class:`CloseReason`, the conversation closes with it (its
#: ``bye:`` is sent, then a lingering close); with a ``(label, detail)`` pair, the connection is unusable and
#: nothing more is sent: the label is counted (one of :data:`geventchat.stats.CLOSE_LABELS`), the detail logged.
Ending = CloseReason | tuple[str, str]


def _timed_out(connection: Connection, _exc: object) -> Ending:
    # The conversation knows which timeout was in force (handshake or idle) and closes with it.
    conversation = connection.conversation
    conversation.expire()
    assert conversation.close_reason is not None  # expire() closed it (or it was closed already)
    return conversation.close_reason


#: The one table from an exception that ends a conversation to how it closes (:data:`Ending`), looked up by the
#: exception's class, then its bases: ``ssl.SSLError`` is an ``OSError`` and is found first. Any other exception is
#: a bug of ours: the server logs it with its traceback and counts ``INTERNAL_ERROR`` (see ``ChatServer._serve``).
_ENDINGS: dict[type[Exception], Callable[[Connection, Any], Ending]] = {
    IdleExpired: _timed_out,
    ShutdownRequested: lambda _connection, _exc: CloseReason.SHUTDOWN,
    TooSlow: lambda _connection, _exc: CloseReason.TOO_SLOW,
    _TLSHandshakeExpired: lambda _connection, _exc: (
        CloseReason.HANDSHAKE_TIMEOUT.value,
        CloseReason.HANDSHAKE_TIMEOUT.value,
    ),
    # Not TLS, a bad certificate, a TLS alert: the peer's side too.
    ssl.SSLError: lambda _connection, exc: (TLS_ERROR, f"tls error: {exc.reason or exc}"),
    OSError: lambda _connection, exc: (RESET, f"connection error (peer's side): {exc.strerror or exc}"),
}
_ENDED_BY = tuple(_ENDINGS)


def _ending(connection: Connection, exc: Exception) -> Ending:
    for kind in type(exc).__mro__:  # bounded: the class's bases
        how = _ENDINGS.get(kind)
        if how is not None:
            return how(connection, exc)
    raise exc  # not one of _ENDED_BY: the caller catches only those


class Connection:
    """One client's greenlet state. :meth:`run` serves the conversation."""

    __slots__ = (
        "_accepted_at",
        "_armed_for",
        "_deadline",
        "_notices_counted",
        "_reading",
        "_stop_reason",
        "_timeout",
        "_write_cut",
        "_writing",
        "address",
        "conversation",
        "debug",
        "greenlet",
        "in_room",
        "member",
        "server",
        "sock",
    )

    def __init__(self, server: Host, sock: GeventSocket, address: tuple[str, int]) -> None:
        self.server = server
        self.sock = sock
        self.address = address
        self.greenlet: RawGreenlet = gevent.getcurrent()
        config = server.config
        self.conversation = ServerConversation(
            config.protocol, handshake_timeout=config.handshake_timeout, framing_window=config.raw_detect_window
        )
        self.debug = log.isEnabledFor(logging.DEBUG)
        self._timeout: IdleTimeout | None = None
        self._armed_for = 0.0
        self._deadline = 0.0
        self._reading = False
        self._writing = False  # a chat member's write in progress (see _write)
        self._stop_reason: CloseReason | None = None  # a shutdown or too slow, asked from another greenlet
        self._write_cut = False
        #: The chat side, made on the first command (a client that never uses chat has none).
        self.member: ChatMember | None = None
        #: True while :attr:`member` is in a room (read per message by the conversation, so a plain attribute).
        self.in_room = False
        if server.rooms is not None:
            self.conversation.chat = self
        self._notices_counted = 0  # conversation.notices_queued already added to stats.notices
        # Only the handshake-latency metric reads it: no float kept per idle client without metrics.
        self._accepted_at = time.monotonic() if server.stats.handshake_latency is not None else 0.0

    def request_shutdown(self) -> None:
        """Ask this connection to say ``bye: server shutting down`` and close, without cutting a reply short."""
        self._request_stop(CloseReason.SHUTDOWN)

    def request_too_slow(self) -> None:
        """Its send queue overflowed: say ``bye: too slow`` (after whole lines only) and close, as a shutdown; and
        also if it is blocked writing its own replies, which a member that does not read would be until its idle
        timeout (cut in the middle of a reply, it gets no ``bye:``, as at an idle timeout)."""
        if self._stop_reason is None:
            self._request_stop(CloseReason.TOO_SLOW)

    def on_message(self, message: bytes) -> bytes | None:
        """The conversation's :class:`~geventchat.protocol.server_side.ChatHook`: makes the member on first use."""
        if self.server.config.chat.redis is None:
            return self._chat(message)  # in memory: never blocks
        # The room service may block on Redis (each round trip bounded by its own timeout): the idle alarm must not
        # fire in the middle of it, so it is off meanwhile and re-armed for what is left of the deadline.
        self._disarm()
        try:
            return self._chat(message)
        finally:
            self._start_timeout(max(self._deadline - time.monotonic(), 0.001))

    def _chat(self, message: bytes) -> bytes | None:
        member = self.member
        if member is None:
            rooms = self.server.rooms
            assert rooms is not None  # the hook is set only with rooms
            member = self.member = ChatMember(self, rooms)
        return member.on_message(message)

    def _request_stop(self, reason: CloseReason) -> None:
        self._stop_reason = reason
        if self._interruptible():
            # Blocked waiting for input (or, too slow, in its own write): interrupt the wait, from the hub's next
            # turn. By then the connection may have woken and be closing, where a throw could escape the handler
            # (and reach the hub's printer): _interrupt_wait throws only if it is still waiting. Otherwise the loop
            # sees the flag before its next read.
            call_soon(self._interrupt_wait)

    def _interruptible(self) -> bool:
        # Reads, for any stop; a chat member's own writes, only for 'too slow' (a shutdown waits for the reply).
        return self._reading or (self._writing and self._stop_reason is CloseReason.TOO_SLOW)

    def _interrupt_wait(self) -> None:
        # _interruptible() is False once this connection has ended, and that matters: its greenlet does not die with
        # it but may be serving the next client by now (see Acceptor.spare_greenlets).
        if self._interruptible() and not self.greenlet.dead:
            throw(self.greenlet, TooSlow() if self._stop_reason is CloseReason.TOO_SLOW else ShutdownRequested())

    def run(self) -> tuple[str, str]:
        """Serve the conversation; returns why it ended: ``(reason, detail)``, the reason one of a small fixed set
        (for statistics and metrics labels), the detail with the peer's error text (for the log)."""
        if self.debug:
            log.debug("%s connected", format_peer(self.address))
        # Under TLS, decrypted bytes can be waiting in the TLS layer while the socket itself has nothing to read:
        # no waiting for the socket before recv() there (see _recv).
        watcher: Any = None
        owned = False
        rest = b""  # of a line the chat writer was in the middle of: it goes out before the bye
        if self.server.tls is None:
            watcher, owned = read_watcher(self.sock)
        try:
            self._open()
            if watcher is not None and self.server.stats.reply_latency is None and not self.debug:
                self._converse_plain(watcher)  # called from here, not _converse: one frame less per idle client
            else:
                self._converse(watcher)
        except _ENDED_BY as exc:
            ending = _ending(self, exc)
            if not isinstance(ending, CloseReason):
                return ending
            self.conversation.close(ending)
        finally:
            # Also on the way out of a kill (GreenletExit): a Timeout left pending would fire into a dead greenlet.
            self._disarm()
            if owned:
                watcher.close()
            if self.member is not None:
                rest = self.member.stop_writing()
        return self._close(rest)

    # -- the three phases

    def _open(self) -> None:
        """Under the handshake timeout: the TLS handshake (if any), then the greeting. (``TCP_NODELAY`` comes from
        the listener: :meth:`ChatServer.start` sets it there, and Linux copies it to every accepted socket.)"""
        if _NODELAY_PER_SOCKET:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Until the timeout line arrives the (shorter) handshake timeout applies; see _handshake_over.
        self._arm(self.conversation.current_timeout)
        self._armed_for = _IN_HANDSHAKE
        if self.server.tls is not None:
            self._tls_handshake(self.server.tls)
        self._write(self.conversation.data_to_send())

    def _converse(self, watcher: Any) -> None:
        """Read → feed → write until the conversation closes (a ``:q``, a line too long, the peer's EOF, a shutdown
        seen between reads). Raises what ends it early (see :data:`_ENDINGS`)."""
        stats = self.server.stats
        conversation = self.conversation
        recv_size = self.server.config.recv_size
        reply_latency = stats.reply_latency
        received_at = 0.0
        hub = gevent.get_hub()
        while not conversation.closed:  # bounded by the idle timeout: each wait for input is
            if self._stop_reason is not None:
                conversation.close(self._stop_reason)
                break
            data = self._recv(recv_size, hub, watcher)
            if reply_latency is not None:
                received_at = time.perf_counter()
            if self._take(data) and reply_latency is not None:
                reply_latency.observe(time.perf_counter() - received_at)
            del data  # before blocking again: an idle client should not pin its last chunk

    def _converse_plain(self, watcher: Any) -> None:
        """:meth:`_converse` for plain TCP (no TLS, no debug log, no latency histogram), where most clients are:
        wait on the socket's watcher, ``recv()`` and ``send()`` on the stdlib socket (no gevent wrapper), and a
        plain line is answered by :meth:`ServerConversation.answer_line` (no event, no list). Anything else, and a
        send the kernel does not take whole, goes the general way."""
        conversation = self.conversation
        stats = self.server.stats
        recv_size = self.server.config.recv_size
        hub = gevent.get_hub()
        plain = plain_socket(self.sock)
        wake = self.greenlet.switch
        # The watcher stays started with our switch while the loop only waits, reads and sends what the kernel
        # takes at once: no start and stop per message. It is stopped before anything that may block in another
        # way (the general path, a short send), where its firing would be a stray switch into that other wait.
        watcher.start(wake)
        try:
            while True:  # bounded by the idle timeout: each wait for input is
                if self._stop_reason is not None:
                    conversation.close(self._stop_reason)
                    return
                self._reading = True
                try:
                    switch_to_hub(hub)
                    data = plain.recv(recv_size)
                except IdleAlarm:
                    self._check_deadline()
                    continue
                except BlockingIOError:
                    continue  # a spurious wake-up: nothing to read yet
                finally:
                    self._reading = False
                reply = conversation.answer_line(data)
                if reply is None:
                    watcher.stop()
                    self._take(data)
                    if conversation.closed:
                        return
                    watcher.start(wake)
                    del data  # before blocking again: an idle client should not pin its last chunk
                    continue
                # Activity: the deadline moves, the Timeout stays (see _arm). Only a plain line after the handshake
                # comes here, so the idle timeout is the one in force.
                self._deadline = time.monotonic() + conversation.idle_timeout
                # Received and taken, whatever becomes of the reply (as the general path counts).
                stats.bytes_in += len(data)
                stats.messages += 1
                if self.member is None:
                    try:
                        sent = plain.send(reply)
                    except BlockingIOError:
                        sent = 0  # the kernel takes nothing now: the general way below waits
                else:
                    sent = 0  # the chat writer may be sending too: _write below takes the member's lock
                if sent == len(reply):
                    stats.bytes_out += sent
                else:
                    watcher.stop()
                    if self.member is None:
                        self._write_rest(reply, sent)
                        stats.bytes_out += len(reply)
                    else:
                        self._write(reply)
                    watcher.start(wake)
                stats.replies += 1  # counted after the write: one that raised sent this reply to no one
                del data, reply
        finally:
            watcher.stop()

    def _take(self, data: bytes) -> bool:
        """Feed one received chunk to the conversation, act on its events and send what it queued. Returns True if
        something was sent."""
        conversation = self.conversation
        stats = self.server.stats
        before = conversation.messages_received
        events = conversation.receive_data(data)
        # Only a chunk that completed nothing can leave auto framing undecided: skip the check otherwise.
        if not events and (window := conversation.framing_window) is not None:
            events += self._detect_framing(window)
        if events:
            self._lines_arrived(events, before)
        stats.bytes_in += len(data)
        out = conversation.data_to_send()
        if not out:
            return False
        self._write(out)
        # Counted after the write: one that raised (cut short, reset) sent these replies to no one.
        stats.replies += conversation.messages_received - before
        if conversation.notices_queued != self._notices_counted:
            stats.notices += conversation.notices_queued - self._notices_counted
            self._notices_counted = conversation.notices_queued
        return True

    def _close(self, rest: bytes = b"") -> tuple[str, str]:
        """After the conversation closed: unless the peer did, send what is queued (the reply to ``:q`` or a
        ``bye:``) and close without a reset. Returns ``(reason, detail)`` as :meth:`run` does."""
        conversation = self.conversation
        reason = conversation.close_reason
        if reason is CloseReason.PEER_CLOSED:
            return str(reason.value), str(reason.value)
        # After a cut write the peer is not reading: no last line to protect.
        queued = rest + conversation.data_to_send()
        linger = self.server.config.linger
        if not self._write_cut and self._flush(queued, linger):
            stats = self.server.stats
            stats.bytes_out += len(queued)
            stats.notices += conversation.notices_queued - self._notices_counted
            # After ':q' with nothing unread a plain close sends a FIN, not a reset: the lingering (a shutdown, a
            # wait and a read per connection) is skipped, and connection churn is mostly such closes.
            polite = reason is CloseReason.QUIT and self.server.tls is None and unread_bytes(self.sock) == 0
            if not polite:
                linger_close(self.sock, linger)
        text = str(reason.value) if reason is not None else "closed"
        return text, text

    def _lines_arrived(self, events: list[ServerEvent], messages_before: int) -> None:
        """A complete line arrived (answered or refused with ``error:``): activity either way. Moves the idle
        deadline, counts the messages, re-arms the Timeout if the idle timeout changed (the handshake is over)."""
        conversation = self.conversation
        timeout = conversation.current_timeout
        self._deadline = time.monotonic() + timeout
        if conversation.messages_received != messages_before:
            self.server.stats.messages += conversation.messages_received - messages_before
        if timeout != self._armed_for:
            if self._armed_for == _IN_HANDSHAKE:
                self._handshake_over()
            pending = self._timeout
            if self._armed_for == _IN_HANDSHAKE and pending is not None and pending.seconds <= timeout:
                # The handshake's Timeout fires before the new deadline, and _check_deadline then re-arms it for
                # what is left, as after any message: a client that leaves within the handshake timeout (most
                # short connections) never needs a second Timeout.
                self._armed_for = timeout
            else:
                self._arm(timeout)
        if self.debug:
            for event in events:
                log.debug("%s: %s", format_peer(self.address), describe_event(event))

    def _handshake_over(self) -> None:
        latency = self.server.stats.handshake_latency
        if latency is not None:
            latency.observe(time.monotonic() - self._accepted_at)

    def _tls_handshake(self, context: ssl.SSLContext) -> None:
        """Wrap our socket in TLS and finish the TLS handshake under the (already armed) handshake timeout."""
        self.sock = context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        while True:  # bounded by the handshake timeout: _check_deadline raises once it has passed
            try:
                self.sock.do_handshake()
                return
            except IdleAlarm:
                try:
                    self._check_deadline()
                except IdleExpired:
                    raise _TLSHandshakeExpired() from None

    # -- blocking operations, each interruptible by the idle alarm and by shutdown

    def _recv(self, size: int, hub: Any = None, watcher: Any = None) -> bytes:
        """Wait for ``watcher`` first when given: that spares the ``recv()`` that would fail with ``EAGAIN`` (and
        the exception gevent raises and catches for it) on every message of a request/reply client. ``recv()``
        still waits by itself if the wake-up was spurious."""
        self._reading = True
        try:
            while True:  # bounded by the idle deadline: _check_deadline raises once it has passed
                try:
                    if watcher is not None:
                        wait_readable(watcher, self.greenlet.switch, hub)
                        watcher = None
                    data: bytes = self.sock.recv(size)
                    return data
                except IdleAlarm:
                    self._check_deadline()
        finally:
            self._reading = False

    def _write(self, data: bytes) -> None:
        member = self.member
        if member is not None:
            # The chat writer may be sending lines from other members: whole writes only, one at a time. (A client
            # that never used chat has no member: its write path is one attribute test longer than before.) While
            # blocked here its queue may overflow: request_too_slow() then interrupts the wait (_interrupt_wait).
            self._writing = True
            try:
                # Its queue may have overflowed while this greenlet was busy elsewhere (a Redis round trip, or its
                # own ':msg' to itself), when there was no wait to interrupt: nothing of this write is out yet.
                self._raise_if_too_slow(cut=False)
                self._acquire(member.write_lock)
            except BaseException:
                self._writing = False
                raise
        try:
            # The common case, a reply the socket buffer takes whole, needs no memoryview and no loop.
            sent = 0
            try:
                sent = self.sock.send(data)
            except IdleAlarm:
                self._check_deadline()  # nothing of this write went out: an IdleExpired here cuts nothing
            if sent != len(data):
                self._write_rest(data, sent)
            self.server.stats.bytes_out += len(data)
        finally:
            if member is not None:
                self._writing = False
                member.write_lock.release()

    def _acquire(self, lock: Semaphore) -> None:
        while True:  # bounded by the idle deadline, as any write
            try:
                lock.acquire()
                return
            except IdleAlarm:
                self._check_deadline()
                self._raise_if_too_slow(cut=False)

    def _raise_if_too_slow(self, *, cut: bool) -> None:
        """Raise :class:`TooSlow` if the member's queue overflowed (``cut``: part of this write went out, so no
        ``bye:`` may follow). Only a member's own writes call it: a stop for any other reason waits for them."""
        if self._stop_reason is CloseReason.TOO_SLOW:
            self._write_cut = cut
            raise TooSlow()

    def _write_rest(self, data: bytes, offset: int) -> None:
        view = memoryview(data)[offset:]
        try:
            while view:  # bounded by the idle deadline while nothing goes out
                try:
                    sent = self.sock.send(view)
                except IdleAlarm:
                    try:
                        self._check_deadline()
                    except IdleExpired:
                        # Part of this write went out: a bye now would be glued to half a reply line.
                        self._write_cut = len(view) != len(data)
                        raise
                    continue
                except TooSlow:
                    self._write_cut = len(view) != len(data)  # likewise
                    raise
                view = view[sent:]
                if view and self._writing:
                    # A member's own write that the socket does not take whole: stop at once if its queue
                    # overflowed meanwhile, when no wait was there to interrupt.
                    self._raise_if_too_slow(cut=len(view) != len(data))
        finally:
            view.release()

    def _detect_framing(self, window: float) -> list[ServerEvent]:
        """Auto framing: bytes without a newline are pending. Wait the window for more; no newline → raw."""
        conversation = self.conversation
        events: list[ServerEvent] = []
        deadline = time.monotonic() + window
        while conversation.awaiting_framing_decision:  # bounded by the window's deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                events += conversation.settle_framing()
                break
            try:
                with gevent.Timeout(remaining, _WindowOver):
                    data = self._recv(self.server.config.recv_size)
            except _WindowOver:
                events += conversation.settle_framing()
                break
            self.server.stats.bytes_in += len(data)
            events += conversation.receive_data(data)
        return events

    def _flush(self, data: bytes, linger: float) -> bool:
        """Send the last bytes (a ``bye:``, or nothing) within ``linger`` seconds. Returns True if all went out."""
        if not data:
            return True  # the usual case after ':q': no Timeout to make
        try:
            with gevent.Timeout(linger, _LingerOver):
                view = memoryview(data)
                while view:  # bounded by the Timeout
                    view = view[self.sock.send(view) :]
                view.release()
        except (OSError, _LingerOver):
            return False
        return True

    # -- the idle timeout: one gevent.Timeout per connection, re-armed lazily

    def _arm(self, seconds: float) -> None:
        """(Re)start the idle timeout for ``seconds`` from now.

        Messages do not restart the Timeout (that would allocate one per message); they move ``_deadline``. When it
        fires early because messages arrived meanwhile, :meth:`_check_deadline` re-arms it for what is left.
        """
        self._deadline = time.monotonic() + seconds
        self._armed_for = seconds
        self._start_timeout(seconds)

    def _start_timeout(self, seconds: float) -> None:
        # A gevent.Timeout's duration is fixed when it is made, so re-arming for another duration replaces it: one
        # pending per connection at any time. Given the IdleAlarm class (not an instance), gevent raises a fresh
        # IdleAlarm when it fires, so no exception object is kept per idle client. Started here, in the
        # connection's own greenlet, which is where gevent raises it.
        if self._timeout is not None:
            self._timeout.close()
        self._timeout = timeout = IdleTimeout(seconds, IdleAlarm)
        timeout.start()

    def _check_deadline(self) -> None:
        """After an :class:`IdleAlarm`: raise :class:`IdleExpired` if the deadline has passed, else re-arm."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise IdleExpired()
        self._start_timeout(remaining)

    def _disarm(self) -> None:
        if self._timeout is not None:
            self._timeout.close()
            self._timeout = None
