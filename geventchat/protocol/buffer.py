"""The one receive buffer both sides' parsers use (as h11's ``ReceiveBuffer``): bytes in, complete lines out, and a
hard cap on what an unfinished line may hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

from .errors import LineTooLong
from .text import NEWLINE

__all__ = ["ReceiveBuffer", "whole_line"]

_CRLF = b"\r\n"


def whole_line(data: bytes, max_line: int) -> bytes | None:
    """``data`` without its line ending if it is exactly one line holding at most ``max_line`` bytes before its
    ``\\n`` (as :class:`ReceiveBuffer` counts), else ``None``: what an empty buffer's :meth:`ReceiveBuffer.lines`
    would give for it, with no buffer (a caller with nothing held need not make one)."""
    end = data.find(NEWLINE)
    if 0 <= end == len(data) - 1 and end <= max_line:
        return data[: end - 1] if data[end - 1 : end] == b"\r" else data[:end]
    return None


def _drop_cr(line: bytes) -> bytes:
    return line[:-1] if line[-1:] == b"\r" else line


class ReceiveBuffer(bytearray):
    """Bytes received and not yet parsed: a ``bytearray`` that hands out complete lines and caps an unfinished one.

    Add what ``recv()`` returned with ``+=``, then iterate over :meth:`lines` (or, for the usual single line,
    try :meth:`whole_line` first). A line ends with ``\\n``, and a ``\\r`` right before it is part of the line
    ending (``\\r\\n`` clients); lines come without either. The cap counts both (what a line holds before its
    ``\\n``). Past the cap (a complete line longer than ``max_line`` bytes, or an unfinished one that already is)
    the iteration raises :class:`~geventchat.protocol.errors.LineTooLong` where that line would
    come, after the lines before it, and everything held is dropped: the stream cannot be parsed past that point.
    A caller that drains the lines after every ``+=`` so never holds more than ``max_line`` bytes between calls,
    whatever the peer sends.

    A subclass rather than a wrapper so that ``len()``, truth and ``+=`` stay C calls: the server asks "is anything
    pending?" for every message.
    """

    __slots__ = ("_searched", "max_line")

    def __init__(self, max_line: int) -> None:
        super().__init__()
        # Bytes at the start already known to hold no newline: a client trickling a long line one byte at a time
        # costs one search of its byte per call, not one search of everything held.
        self._searched = 0
        #: The most bytes a line may hold before its ``\\n`` (a ``\\r`` included).
        self.max_line = max_line

    def whole_line(self, data: bytes) -> bytes | None:
        """``data`` without its line ending if nothing is held and ``data`` is exactly one line within the cap: the
        usual chunk, taken without copying it into the buffer. Otherwise ``None``: add it with ``+=`` and iterate
        :meth:`lines`, which gives the same lines, or the same error, whatever the chunking."""
        return None if self else whole_line(data, self.max_line)

    def lines(self) -> Iterator[bytes]:
        """Take the complete lines held, in order, each without its line ending; the unfinished rest stays. Raises
        :class:`~geventchat.protocol.errors.LineTooLong` (and drops everything held) at a line, complete or not,
        longer than :attr:`max_line`, after the lines before it."""
        if self.find(NEWLINE, self._searched) < 0:
            if len(self) > self.max_line:
                self._overflow()
            self._searched = len(self)
            return iter(())
        # One split for all the lines held: a pipelining client's lines cost one search, not one call each.
        held = bytes(self)
        pieces = held.split(NEWLINE)
        rest = pieces.pop()
        limit = self.max_line
        if len(rest) > limit or max(map(len, pieces)) > limit:
            self.clear()
            return self._lines_then_overflow(pieces)
        self[:] = rest
        self._searched = len(rest)
        if _CRLF in held:
            return iter([_drop_cr(line) for line in pieces])
        return iter(pieces)

    def take(self) -> bytes:
        """Everything held, as one chunk, leaving the buffer empty (an unframed client's first chunk)."""
        data = bytes(self)
        self.clear()
        return data

    def clear(self) -> None:
        """Drop everything held."""
        super().clear()
        self._searched = 0

    def _lines_then_overflow(self, pieces: list[bytes]) -> Iterator[bytes]:
        limit = self.max_line
        for line in pieces:
            if len(line) > limit:
                break
            yield _drop_cr(line)
        raise LineTooLong(limit)

    def _overflow(self) -> NoReturn:
        self.clear()
        raise LineTooLong(self.max_line)
