"""Texts on the wire and in logs: the protocol's fixed strings, timeout parsing and formatting, and peer text made
safe to print."""

from __future__ import annotations

import functools
import math
import re

from .errors import InvalidTimeout

NEWLINE = b"\n"
#: The message that ends a session.
QUIT = ":q"
_QUIT_BYTES = QUIT.encode()
ERROR_PREFIX = "error: "
BYE_PREFIX = "bye: "
#: Longest piece of peer text quoted back in a notice.
_QUOTE_LIMIT = 40


# ASCII only: in a str pattern \d would also match other scripts' digits ('٣٠' would parse as 30) and \s other
# spaces; the protocol's timeout is a plain ASCII decimal. (The bytes pattern is ASCII by nature.)
_DECIMAL = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*", re.ASCII)
_LEADING_DECIMAL = re.compile(rb"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def escape_controls(text: str) -> str:
    """``text`` with every non-printable character (ANSI escapes, ``\r``, ...) escaped, so peer-controlled text
    printed on a terminal or in a log shows as what it is and is never interpreted."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def quote_peer_text(text: str | bytes, limit: int = _QUOTE_LIMIT) -> str:
    """Peer-controlled text made safe to print or log: quoted, control characters escaped, length capped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return f"'{escape_controls(text[:limit])}'" + ("..." if len(text) > limit else "")


def format_peer(address: tuple[str, int] | tuple[str, int, int, int] | str) -> str:
    """A peer address for logs: ``host:port``, ``[v6]:port`` (unambiguous), or the text as given."""
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def describe_event(event: object) -> str:
    """An event for a debug log, with peer-supplied bytes escaped."""
    data = getattr(event, "data", None)
    if isinstance(data, bytes):
        return f"{type(event).__name__}({quote_peer_text(data)})"
    return repr(event)


def parse_timeout(text: str, minimum: float, maximum: float) -> tuple[float, float]:
    """Parse a timeout request. Returns ``(applied, requested)``: the request clamped to ``[minimum, maximum]``.

    Raises :class:`InvalidTimeout` unless ``text`` is a positive decimal number in ASCII digits (``30``, ``0.5``,
    ``.5``, with optional ASCII whitespace around it); exponents, signs, ``nan``, ``inf`` and digits of other
    scripts are refused.
    """
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise InvalidTimeout(f"timeout {quote_peer_text(text)} is not a positive decimal number of seconds")
    requested = float(match.group(1))
    if not (requested > 0 and math.isfinite(requested)):
        raise InvalidTimeout(f"timeout {quote_peer_text(text)} must be greater than 0")
    return min(max(requested, minimum), maximum), requested


@functools.lru_cache(maxsize=16)
def _encoded(text: str) -> bytes:
    """One shared encoding of a configured text, instead of a copy per connection."""
    return text.encode()


def format_seconds(seconds: float) -> str:
    """``30`` for whole seconds, ``0.5`` otherwise: how timeouts are written in notices."""
    return f"{seconds:g}"
