"""Where the load goes and where it comes from: ``--host`` and ``--gc-source-addresses`` parsing.

Nothing here imports Locust, so the parsing is tested without monkey-patching the test process.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["BadTarget", "Target", "parse_source_addresses", "parse_targets"]

#: Most source addresses one range may expand to (a typo like 127.0.0.1-127.255.0.0 should not allocate millions).
MAX_SOURCE_ADDRESSES = 4096


class BadTarget(ValueError):
    """``--host`` or ``--gc-source-addresses`` is missing or malformed; ``str()`` says what to write instead."""


@dataclass(frozen=True)
class Target:
    """One server address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_HOST_HELP = "expected tcp://HOST:PORT or HOST:PORT (several separated by commas), e.g. --host tcp://127.0.0.1:8888"


def parse_targets(text: str | None) -> tuple[Target, ...]:
    """Parse Locust's ``--host`` for a TCP server: ``tcp://HOST:PORT`` or ``HOST:PORT``; IPv6 as ``[::1]:PORT``.

    Several addresses separated by commas spread users over them (round robin), e.g. two server processes on
    127.0.0.1 and 127.0.0.2. Raises :class:`BadTarget` for a missing host, another scheme, or a bad port.
    """
    if text is None or not text.strip():
        raise BadTarget(f"no host given: {_HOST_HELP}")
    return tuple(_parse_one(part.strip()) for part in text.split(","))


def _parse_one(text: str) -> Target:
    original = text
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "tcp":
            raise BadTarget(f"unsupported scheme in {original!r}: {_HOST_HELP}")
        text = rest
    text = text.rstrip("/")
    if not text:
        raise BadTarget(f"no host in {original!r}: {_HOST_HELP}")
    if text.startswith("["):
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise BadTarget(f"bad IPv6 address in {original!r}: {_HOST_HELP}")
        port_text = port_text[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise BadTarget(f"no port in {original!r}: {_HOST_HELP}")
        if ":" in host:
            raise BadTarget(f"write IPv6 addresses in brackets, as [{host}]:{port_text}: {_HOST_HELP}")
    if not host or "/" in host or any(c.isspace() for c in host):
        raise BadTarget(f"bad host in {original!r}: {_HOST_HELP}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise BadTarget(f"bad port {port_text!r} in {original!r}: the port must be 1-65535")
    return Target(host, int(port_text))


def parse_source_addresses(text: str | None) -> tuple[str, ...]:
    """Parse ``--gc-source-addresses``: empty for "let the kernel choose", else addresses and inclusive ranges
    separated by commas: ``127.0.0.2,127.0.0.3`` or ``127.0.0.1-127.0.0.8``. Raises :class:`BadTarget`."""
    if text is None or not text.strip():
        return ()
    addresses: list[str] = []
    for part in text.split(","):
        part = part.strip()
        first_text, dash, last_text = part.partition("-")
        try:
            first = ipaddress.ip_address(first_text.strip())
            last = ipaddress.ip_address(last_text.strip()) if dash else first
        except ValueError:
            raise BadTarget(f"bad source address {part!r}: expected A.B.C.D or A.B.C.D-E.F.G.H") from None
        if first.version != last.version or int(last) < int(first):
            raise BadTarget(f"bad source address range {part!r}")
        if int(last) - int(first) + len(addresses) >= MAX_SOURCE_ADDRESSES:
            raise BadTarget(f"more than {MAX_SOURCE_ADDRESSES} source addresses in {text!r}")
        addresses.extend(str(ipaddress.ip_address(n)) for n in range(int(first), int(last) + 1))
    return tuple(addresses)
