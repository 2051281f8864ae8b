"""The client's side of one connection: :class:`ClientConversation`."""

from __future__ import annotations

import math

from ..config import Framing, ProtocolConfig
from .buffer import ReceiveBuffer
from .errors import LineTooLong, LocalProtocolError, RemoteProtocolError
from .events import Bye, ClientEvent, CloseReason, ConnectionClosed, ErrorNotice, Greeting, Reply
from .text import _QUIT_BYTES, BYE_PREFIX, ERROR_PREFIX, NEWLINE, format_seconds, quote_peer_text

__all__ = ["ClientConversation"]


class ClientConversation:
    """The client's side of one connection: turns the server's bytes into :class:`Greeting`, :class:`Reply`,
    :class:`ErrorNotice`, :class:`Bye` and a final :class:`ConnectionClosed`; turns our requests into bytes.

    In line framing, a line is a :class:`Reply` if it starts with the expected prefix, else a notice if it starts
    with ``error: `` / ``bye: ``, else a reply from a server with another prefix. In raw framing every chunk after
    the greeting is a reply (the original tutorial's server sends no notices).
    """

    __slots__ = ("_buffer", "_framing", "_greeted", "_prefix", "closed")

    def __init__(
        self, prefix: str = ProtocolConfig.prefix, *, framing: Framing = Framing.LINE, max_line: int = 65536
    ) -> None:
        if framing is Framing.AUTO:
            raise LocalProtocolError("a client must choose line or raw framing")
        self._prefix = prefix
        self._framing = framing
        # Replies carry the prefix, and maybe a '\r' (the buffer's cap counts it).
        self._buffer = ReceiveBuffer(max_line + len(prefix.encode()) + 1)
        self._greeted = False
        #: True once the server's end of input has been seen.
        self.closed = False

    @property
    def framing(self) -> Framing:
        return self._framing

    @property
    def prefix(self) -> str:
        """The prefix that marks an echo reply."""
        return self._prefix

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete line held (line framing)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the server (``b""`` at end of input). Raises :class:`RemoteProtocolError` if the server
        sends a line over the limit (:class:`LineTooLong`) or invalid UTF-8 in line framing."""
        if self.closed:
            raise LocalProtocolError("receive_data() called after the server closed")
        events: list[ClientEvent] = []
        if not data:
            self.closed = True
            if self._buffer:
                # The server closed in the middle of a line: what we have is all there is.
                events.append(self._classify(self._decode(self._buffer.take())))
            events.append(ConnectionClosed(CloseReason.PEER_CLOSED))
        elif self._framing is Framing.RAW:
            text = data.decode("utf-8", "replace")
            if not self._greeted:
                self._greeted = True
                events.append(Greeting(text))
            else:
                events.append(Reply(text, text.removeprefix(self._prefix)))
        elif (line := self._buffer.whole_line(data)) is not None:
            # The usual case, one whole line (a reply), taken as it is.
            events.append(self._classify(self._decode(line)))
        else:
            self._receive_lines(data, events)
        return events

    def _receive_lines(self, data: bytes, events: list[ClientEvent]) -> None:
        buffer = self._buffer
        buffer += data
        try:
            for line in buffer.lines():
                events.append(self._classify(self._decode(line)))
        except LineTooLong as exc:
            raise LineTooLong(exc.limit, "server") from None

    def _decode(self, line: bytes) -> str:
        try:
            return line.decode()
        except UnicodeDecodeError:
            raise RemoteProtocolError(f"server sent invalid UTF-8: {quote_peer_text(line)}") from None

    def _classify(self, text: str) -> ClientEvent:
        if not self._greeted:
            self._greeted = True
            if text.startswith(BYE_PREFIX):  # 'bye: server full' comes instead of the greeting
                return Bye(text[len(BYE_PREFIX) :])
            return Greeting(text)
        prefix = self._prefix
        if prefix and text.startswith(prefix):
            return Reply(text, text[len(prefix) :])
        if text.startswith(ERROR_PREFIX):
            return ErrorNotice(text[len(ERROR_PREFIX) :])
        if text.startswith(BYE_PREFIX):
            return Bye(text[len(BYE_PREFIX) :])
        return Reply(text, text)

    # -- output

    def send_timeout(self, seconds: float) -> bytes:
        """Bytes that request an idle timeout of ``seconds``."""
        if not (seconds > 0 and math.isfinite(seconds)):
            raise LocalProtocolError(f"timeout must be a positive number of seconds, not {seconds!r}")
        return self._frame(format_seconds(seconds).encode())

    def send_message(self, message: str | bytes) -> bytes:
        """Bytes that send one message. Raises :class:`LocalProtocolError` for a newline in line framing."""
        data = message.encode() if isinstance(message, str) else message
        if self._framing is Framing.LINE:
            if NEWLINE in data:
                raise LocalProtocolError("a message cannot contain a newline")
            return data + NEWLINE
        return data

    def send_quit(self) -> bytes:
        """Bytes that end the session (``:q``)."""
        return self._frame(_QUIT_BYTES)

    def _frame(self, data: bytes) -> bytes:
        return data + NEWLINE if self._framing is Framing.LINE else data
