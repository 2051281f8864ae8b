"""One member's queue of lines waiting to be written: :class:`Outbox`."""

from __future__ import annotations

from ..protocol.errors import LocalProtocolError
from ..protocol.text import NEWLINE

__all__ = ["DEFAULT_SEND_QUEUE", "Outbox"]

#: ``--send-queue``: bytes of room and private lines one member may have waiting.
DEFAULT_SEND_QUEUE = 1 << 20


class Outbox:
    """Room and private lines waiting to be written to one member, capped at ``limit`` bytes (as IRC's SendQ).

    The room's fan-out only ever appends here, so a member who does not read never blocks the sender or the room.
    Past the cap the member is too slow: :meth:`put` returns False and the queue drops what it held and keeps
    nothing more (the member is going: its memory is freed at once, not after a write it will never read). The
    shell finishes the write in progress, writes :data:`~geventchat.protocol.chat.TOO_SLOW` and closes. Lines go in
    and come out whole, so ``bye:`` can never land in the middle of a line.
    """

    __slots__ = ("_lines", "_pending", "limit", "overflowed")

    def __init__(self, limit: int = DEFAULT_SEND_QUEUE) -> None:
        if limit < 1:
            raise ValueError(f"send queue limit must be at least 1 byte, not {limit}")
        #: The cap, in bytes.
        self.limit = limit
        #: True once a line did not fit; every later :meth:`put` is refused too.
        self.overflowed = False
        self._lines: list[bytes] = []
        self._pending = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet taken (never more than :attr:`limit`)."""
        return self._pending

    def put(self, line: bytes) -> bool:
        """Queue one complete line (ending with ``\\n``). Returns False, keeping nothing, if it would take the queue
        past :attr:`limit` or the queue has already overflowed: the member must then be closed with ``bye: too
        slow``. Raises :class:`LocalProtocolError` for bytes that are not one complete line (our bug)."""
        if not line.endswith(NEWLINE) or line.count(NEWLINE) != 1:
            raise LocalProtocolError(f"outbox takes one complete line at a time, not {line[:60]!r}")
        if self.overflowed or self._pending + len(line) > self.limit:
            self.overflowed = True
            self._lines.clear()
            self._pending = 0
            return False
        self._lines.append(line)
        self._pending += len(line)
        return True

    def take(self) -> bytes:
        """Everything queued, as one buffer of whole lines (``b""`` if nothing), and the queue emptied."""
        lines = self._lines
        if not lines:
            return b""
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        lines.clear()
        self._pending = 0
        return data
