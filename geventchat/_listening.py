"""The listening line, ``geventchat listening on HOST:PORT``: how the server prints it and how a harness reads it.

The line is the server's readiness signal: tests, benchmarks and supervisors start ``python -m geventchat`` with
``--port 0`` and learn the real port from it. Printer and reader live together so they cannot drift apart. An
IPv6 address is printed in brackets, as in a URL (``[::1]:8080``), so the last colon is always the port's.

Standard library only: the gevent-free side (benchmark runners, supervisors) imports it too.
"""

from __future__ import annotations

import re

#: The program name geventchat's own line starts with (reference servers in benchmarks/ print theirs).
PROGRAM = "geventchat"

_LINE = re.compile(r"(?P<name>\S+) listening on (?:\[(?P<v6>[^\]\s]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})")


def format_listening_line(address: tuple[str, int], name: str = PROGRAM) -> str:
    """``NAME listening on HOST:PORT``, with an IPv6 ``HOST`` in brackets; no newline."""
    host, port = address[0], address[1]
    shown = f"[{host}]" if ":" in host else host
    return f"{name} listening on {shown}:{port}"


def parse_listening_line(line: str, name: str | None = PROGRAM) -> tuple[str, int] | None:
    """``(host, port)`` from a listening line (IPv6 without its brackets), or None if ``line`` is not one.

    ``name`` is the program that must have printed it; None accepts any one-word name. Surrounding whitespace
    (the newline) is ignored; anything else around the line, an unbracketed IPv6 address (its port would be
    ambiguous) or a port outside 1-65535 makes it not a listening line.
    """
    match = _LINE.fullmatch(line.strip())
    if match is None or (name is not None and match.group("name") != name):
        return None
    port = int(match.group("port"))
    if not 0 < port <= 65535:
        return None
    return match.group("v6") or match.group("host"), port
