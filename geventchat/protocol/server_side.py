"""The server's side of one connection: :class:`ServerConversation`."""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from typing import Protocol

from ..config import Framing, ProtocolConfig, ServerConfig
from .buffer import ReceiveBuffer, whole_line
from .errors import InvalidTimeout, LineTooLong, LocalProtocolError
from .events import (
    CloseReason,
    ConnectionClosed,
    FramingChosen,
    MessageReceived,
    MessageRejected,
    QuitReceived,
    ServerEvent,
    TimeoutNegotiated,
    TimeoutRejected,
)
from .text import (
    _LEADING_DECIMAL,
    _QUIT_BYTES,
    BYE_PREFIX,
    ERROR_PREFIX,
    NEWLINE,
    _encoded,
    format_seconds,
    parse_timeout,
)

__all__ = ["ChatHook", "ServerConversation"]


class ChatHook(Protocol):
    """Where a line-framed conversation sends the messages chat may concern (:attr:`ServerConversation.chat`)."""

    #: True while the member is in a room: then every message concerns chat (it is fanned out).
    in_room: bool

    def on_message(self, message: bytes) -> bytes | None:
        """A message (valid UTF-8, without its line break, not ``:q``) that starts with ``:`` or was sent while
        :attr:`in_room`; its echo reply is already queued. Returns the line(s) to queue right after it (the
        command's ``ok:``/``error:``), or ``None``."""


class _State(enum.Enum):
    """Where a server conversation is."""

    #: Greeting queued; waiting for the client's timeout line (or an unframed client's first chunk).
    HANDSHAKE = "handshake"
    #: The timeout is settled (negotiated or defaulted); every complete message is answered.
    CHATTING = "chatting"
    #: A :class:`ConnectionClosed` event was produced; nothing more is read.
    CLOSED = "closed"


_CHATTING = _State.CHATTING
_CLOSED = _State.CLOSED
_LINE = Framing.LINE
_NOT_UTF8 = "message is not valid UTF-8"
_COLON = ord(":")


@functools.lru_cache(maxsize=16)
def _buffer_cap(max_line: int) -> int:
    """What a line may hold before its ``\\n``: the limit and a ``\\r``. One int per configuration, shared, rather
    than one more object per idle connection."""
    return max_line + 1


@functools.lru_cache(maxsize=16)
def _greeting(text: str, raw: bool) -> bytes:
    """The greeting's bytes, shared per configuration rather than encoded per connection."""
    return text.encode() if raw else text.encode() + NEWLINE


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


class ServerConversation:
    """The server's side of one connection.

    Construct it on accept; the greeting is queued at once. Feed every received chunk to :meth:`receive_data`
    (``b""`` for end of input) and send :meth:`data_to_send` after each call. After a :class:`ConnectionClosed`
    event, send what is queued and close the socket.

    The clock is the shell's, the rules are here. The shell allows :attr:`current_timeout` seconds from accept,
    and again from every call that returned events (events mean a complete line arrived: activity, and perhaps a
    new timeout); when they pass, it calls :meth:`expire`, which closes with the reason in force. While
    :attr:`framing_window` is not ``None`` it waits that long for more input, then calls :meth:`settle_framing`.
    It calls :meth:`close` for its own reasons (shutdown).

    Memory is bounded: between calls at most ``max_line + 1`` bytes of an incomplete line are held (the
    :class:`~geventchat.protocol.buffer.ReceiveBuffer`'s cap: the line and a ``\\r`` whose ``\\n`` has not come).
    """

    __slots__ = (
        "_buffer",
        "_config",
        "_framing",
        "_framing_window",
        "_handshake_timeout",
        "_max_line",
        "_out",
        "_prefix",
        "_state",
        "chat",
        "close_reason",
        "idle_timeout",
        "messages_received",
        "notices_queued",
    )

    def __init__(
        self,
        config: ProtocolConfig,
        *,
        handshake_timeout: float | None = None,
        framing_window: float = ServerConfig.raw_detect_window,
    ) -> None:
        """``handshake_timeout``: seconds the client has to send its timeout line; it applies until that line
        arrives, when shorter than the idle timeout (``None``: the idle timeout alone). ``framing_window``: seconds
        ``auto`` framing waits for a newline before deciding the client is unframed. Both as the shell's
        :class:`~geventchat.config.ServerConfig` says."""
        self._config = config
        self._handshake_timeout = handshake_timeout
        self._framing_window = framing_window
        self._framing = config.framing
        self._max_line = config.max_line
        self._prefix = _encoded(config.prefix)
        self._state = _State.HANDSHAKE
        # Made when part of a line must wait for the rest (and dropped once empty again): a client whose chunks are
        # whole lines never needs one.
        self._buffer: ReceiveBuffer | None = None
        #: The idle timeout in force, in seconds (the default until the client negotiates one).
        self.idle_timeout: float = config.default_timeout
        #: Why the conversation ended, once it has.
        self.close_reason: CloseReason | None = None
        #: Complete messages answered so far (for statistics); each queued exactly one reply.
        self.messages_received = 0
        #: ``error:`` and ``bye:`` lines queued so far (for statistics).
        self.notices_queued = 0
        #: Set by the shell to serve chat: line-framed messages after the handshake that start with ``:`` (or all,
        #: while :attr:`ChatHook.in_room`) go to it, and what it returns follows their echo reply. ``None``: echo
        #: only. Costs a message one attribute test (and a first-byte check with a hook).
        self.chat: ChatHook | None = None
        self._out: list[bytes] = [_greeting(config.greeting, self._framing is Framing.RAW)]

    # -- state the shell asks about

    @property
    def framing(self) -> Framing:
        """The framing in force; :attr:`Framing.AUTO` until it has been decided."""
        return self._framing

    @property
    def closed(self) -> bool:
        """True once a :class:`ConnectionClosed` event has been produced."""
        return self._state is _State.CLOSED

    @property
    def awaiting_framing_decision(self) -> bool:
        """True in ``auto`` framing while bytes without a newline are pending: the shell should wait the detection
        window for more input, then call :meth:`settle_framing` if none came. End of input (``receive_data(b"")``)
        within the window settles it too: the pending chunk is answered in raw framing, then the conversation
        closes."""
        return self._framing is Framing.AUTO and bool(self._buffer)

    @property
    def framing_window(self) -> float | None:
        """While ``auto`` framing is undecided (:attr:`awaiting_framing_decision`): the seconds the shell gives the
        client, from the chunk that left it undecided, to send a newline; if none comes, it calls
        :meth:`settle_framing` (unless :attr:`current_timeout` ran out first: then :meth:`expire`). ``None`` once
        decided, or while nothing is pending."""
        return self._framing_window if self.awaiting_framing_decision else None

    @property
    def current_timeout(self) -> float:
        """Seconds the shell allows without a complete message before calling :meth:`expire`: the handshake
        timeout until the client's timeout line arrives (when it is the shorter), then the idle timeout. Read it
        again after every call that returned events: the handshake may have ended, the timeout changed."""
        limit = self._handshake_timeout
        if limit is not None and limit < self.idle_timeout and self._state is _State.HANDSHAKE:
            return limit
        return self.idle_timeout

    @property
    def handshake_done(self) -> bool:
        """True once the client's first line (its idle-timeout request, valid or not) has been read."""
        return self._state is not _State.HANDSHAKE

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message held (never more than ``max_line + 1``)."""
        return 0 if self._buffer is None else len(self._buffer)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call, as one buffer (``b""`` if nothing)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # -- input

    def receive_data(self, data: bytes) -> list[ServerEvent]:
        """Feed bytes received from the client; ``b""`` means the client closed its side (in ``auto`` framing,
        a chunk still awaiting the framing decision is then answered as raw before the :class:`ConnectionClosed`).

        Returns the events they completed (often none). Replies and notices are queued for :meth:`data_to_send`.
        Raises :class:`LocalProtocolError` if the conversation is already closed.
        """
        if (
            self._state is _CHATTING
            and self._framing is _LINE
            and data
            and data.find(NEWLINE) == len(data) - 1
            and len(data) <= self._max_line + 1
            and not self._buffer
            and data.isascii()
            and not data.endswith(b"\r\n")
        ):
            # The common case in one step: one whole plain line, nothing pending. The same as the line path (the
            # reply is the prefix and the line as received), with no buffering, split or join. Checked here rather
            # than with ReceiveBuffer.whole_line(): one call fewer is 6% of this path's instructions. answer_line()
            # tests the same condition (plus no ':' and no room): change the two together.
            events: list[ServerEvent] = []
            self._accept(data[:-1], self._prefix + data, events)
            return events
        if self._state is _State.CLOSED:
            raise LocalProtocolError("receive_data() called on a closed conversation")
        events = []
        if not data:
            self._end_of_input(events)
        elif self._framing is Framing.LINE:
            self._receive_lines(data, events)
        elif self._framing is Framing.RAW:
            self._receive_chunk(data, events)
        else:
            self._receive_undecided(data, events)
        return events

    def answer_line(self, data: bytes) -> bytes | None:
        """The common case without events: if ``data`` is one whole plain line that needs nothing but its echo,
        returns the reply (the prefix and the line as received) and counts the message; the caller sends it.
        Otherwise returns ``None`` and changes nothing: feed ``data`` to :meth:`receive_data`.

        A plain line: after the handshake, in line framing, nothing pending, ASCII, a ``\n`` ending and no
        ``\r``, within the limit, not starting with ``:`` (commands and ``:q``), and not in a chat room. Such a
        line gives :meth:`receive_data` exactly one :class:`MessageReceived` and this reply, so a shell that does
        not look at the event may take this path (and save the event and the list it comes in). Its condition is
        receive_data()'s one-line fast path plus those two: change the two together
        (tests/test_protocol_properties.py compares the paths for any chunking)."""
        if (
            self._state is _CHATTING
            and self._framing is _LINE
            and data.find(NEWLINE) == len(data) - 1 > 0
            and len(data) <= self._max_line + 1
            and data[0] != _COLON
            and not self._buffer
            and data.isascii()
            and data[-2] != 13  # '\r': the reply would keep it, the message would not
            and (self.chat is None or not self.chat.in_room)
        ):
            self.messages_received += 1
            return self._prefix + data
        return None

    def settle_framing(self) -> list[ServerEvent]:
        """Decide ``auto`` framing for a client whose pending bytes carried no newline within the detection window:
        it is an unframed (raw) client. Returns the events of its first chunk. No-op in any other situation."""
        if not self.awaiting_framing_decision:
            return []
        self._framing = Framing.RAW
        events: list[ServerEvent] = [FramingChosen(Framing.RAW)]
        buffer = self._buffer
        assert buffer is not None  # awaiting a decision: bytes are held
        self._buffer = None
        self._receive_chunk(buffer.take(), events)
        return events

    def close(self, reason: CloseReason) -> list[ServerEvent]:
        """End the conversation from the server's side (idle timeout, shutdown). Queues the ``bye:`` line (line
        framing) and returns the :class:`ConnectionClosed` event; returns ``[]`` if already closed."""
        if self._state is _State.CLOSED:
            return []
        if reason is CloseReason.IDLE_TIMEOUT:
            bye = f"idle timeout ({format_seconds(self.idle_timeout)}s)"
        else:
            bye = reason.value
        events: list[ServerEvent] = []
        self._finish(events, reason, bye)
        return events

    def expire(self) -> list[ServerEvent]:
        """The shell's deadline passed: :attr:`current_timeout` seconds without a complete message (or of a reply
        the client would not read). Closes with :attr:`CloseReason.HANDSHAKE_TIMEOUT` if the handshake timeout was
        the one in force, else :attr:`CloseReason.IDLE_TIMEOUT`, as :meth:`close` does; ``[]`` if already closed."""
        # current_timeout is shorter than the idle timeout only while the handshake timeout is the one in force.
        in_handshake = self.current_timeout < self.idle_timeout
        return self.close(CloseReason.HANDSHAKE_TIMEOUT if in_handshake else CloseReason.IDLE_TIMEOUT)

    @staticmethod
    def reject(reason: CloseReason) -> bytes:
        """What a client turned away on accept gets instead of the greeting: ``bye: <reason>``."""
        return f"{BYE_PREFIX}{reason.value}\n".encode()

    # -- internals: one path per framing, all ending in _accept

    def _accept(self, message: bytes, reply: bytes, events: list[ServerEvent]) -> None:
        """Answer one complete message with ``reply``: every framing's messages come here, the one-line fast path's
        too, and here alone ``:q`` ends the conversation."""
        events.append(MessageReceived(message))
        self._out.append(reply)
        self.messages_received += 1
        if message == _QUIT_BYTES:
            events.append(QuitReceived())
            self._finish(events, CloseReason.QUIT, None)
            return
        chat = self.chat
        if chat is not None and (chat.in_room or message[:1] == b":") and self._framing is _LINE:
            # Raw messages are chunks, not lines: raw clients are echo-only. A handshake line never comes here.
            answer = chat.on_message(message)
            if answer:
                self._out.append(answer)

    def _receive_lines(self, data: bytes, events: list[ServerEvent]) -> None:
        """Line framing: a line of valid UTF-8 is a message; any other gets an ``error:`` and the conversation goes
        on; one over the limit closes it."""
        buffer = self._buffer
        max_line = self._max_line
        lines: Iterable[bytes]
        if buffer is None:
            line = whole_line(data, _buffer_cap(max_line))
            if line is not None:
                lines = (line,)  # the usual chunk: no buffer to make, copy into and split
            else:
                buffer = self._buffer = ReceiveBuffer(_buffer_cap(max_line))
        if buffer is not None:
            buffer += data
        prefix = self._prefix
        try:
            if buffer is not None:
                lines = buffer.lines()  # may raise LineTooLong (an unfinished line over the cap)
            for line in lines:
                if len(line) > max_line:  # the buffer's cap counts a '\r'; the limit is on the line without it
                    raise LineTooLong(max_line)
                if self._state is not _CHATTING:
                    self._handshake_line(line, events)
                elif line.isascii() or _is_utf8(line):
                    self._accept(line, prefix + line + NEWLINE, events)
                else:
                    events.append(MessageRejected(_NOT_UTF8))
                    self._notice_error(_NOT_UTF8)
                if self._state is _CLOSED:
                    return
        except LineTooLong:
            self._finish(events, CloseReason.LINE_TOO_LONG, f"line too long (limit {max_line} bytes)")
        if not self._buffer:
            self._buffer = None  # nothing held: an idle client keeps no buffer

    def _handshake_line(self, line: bytes, events: list[ServerEvent]) -> None:
        self._state = _State.CHATTING
        if line == _QUIT_BYTES:
            # Quitting before negotiating is still quitting: a message like any other, not a timeout request.
            self._accept(line, self._prefix + line + NEWLINE, events)
            return
        try:
            text = line.decode()
        except UnicodeDecodeError:
            events.append(TimeoutRejected(_NOT_UTF8, self.idle_timeout))
            self._notice_error(_NOT_UTF8)
            return
        config = self._config
        try:
            seconds, requested = parse_timeout(text, config.min_timeout, config.max_timeout)
        except InvalidTimeout as exc:
            reason = f"{exc}; using the default of {format_seconds(config.default_timeout)}s"
            events.append(TimeoutRejected(reason, config.default_timeout))
            self._notice_error(reason)
            return
        self.idle_timeout = seconds
        events.append(TimeoutNegotiated(seconds, requested))

    def _receive_chunk(self, data: bytes, events: list[ServerEvent]) -> None:
        """Raw framing: one received chunk is one message; no notices, nothing added to replies."""
        if self._state is _State.HANDSHAKE:
            data = self._raw_handshake(data, events)
            if not data:
                return
        self._accept(data, self._prefix + data, events)

    def _raw_handshake(self, data: bytes, events: list[ServerEvent]) -> bytes:
        """An unframed client's first chunk: its leading number is the timeout. Returns the rest of the chunk."""
        self._state = _State.CHATTING
        match = _LEADING_DECIMAL.match(data)
        requested = float(match.group(1)) if match else 0.0
        if requested > 0:
            config = self._config
            self.idle_timeout = min(max(requested, config.min_timeout), config.max_timeout)
            events.append(TimeoutNegotiated(self.idle_timeout, requested))
        else:
            events.append(TimeoutRejected("no leading positive number", self.idle_timeout))
        return data[match.end() :] if match else data

    def _receive_undecided(self, data: bytes, events: list[ServerEvent]) -> None:
        """``auto`` framing, not decided yet: a newline makes it a line client; bytes without one wait for the
        detection window (see :attr:`awaiting_framing_decision`)."""
        if NEWLINE in data:
            self._framing = Framing.LINE
            events.append(FramingChosen(Framing.LINE))
            self._receive_lines(data, events)
            return
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = ReceiveBuffer(_buffer_cap(self._max_line))
        buffer += data
        if len(buffer) > self._max_line:
            # Too much for a line that has no newline yet: cannot be a line client within the limits, and
            # waiting longer would buffer past the cap. It is a raw client sending a big first chunk.
            events.extend(self.settle_framing())

    def _end_of_input(self, events: list[ServerEvent]) -> None:
        if self.awaiting_framing_decision:
            # End of input is a decision too: no newline can follow, so this is an unframed client that sent its
            # one chunk and half-closed (``printf 30hi | socat``). Answer it, then close.
            events += self.settle_framing()
            if self._state is _State.CLOSED:  # the chunk was ':q'
                return
        self._finish(events, CloseReason.PEER_CLOSED, None)

    def _finish(self, events: list[ServerEvent], reason: CloseReason, bye: str | None) -> None:
        self._state = _State.CLOSED
        self.close_reason = reason
        self._buffer = None
        if bye is not None and self._framing is not Framing.RAW:
            self._out.append(f"{BYE_PREFIX}{bye}\n".encode())
            self.notices_queued += 1
        else:
            bye = None
        events.append(ConnectionClosed(reason, bye))

    def _notice_error(self, reason: str) -> None:
        self._out.append(f"{ERROR_PREFIX}{reason}\n".encode())
        self.notices_queued += 1
