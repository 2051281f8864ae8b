"""The PROXY protocol (versions 1 and 2), receiving side, sans-IO: bytes in, a parsed header and leftover bytes out.

A load balancer in TCP mode (HAProxy with ``send-proxy`` or ``send-proxy-v2``) opens its own connection to the
server, so the server's ``getpeername()`` is the load balancer. With the PROXY protocol the balancer first sends one
header naming the real client's address; then the client's bytes follow unchanged. The specification is HAProxy's
``proxy-protocol.txt``. Nothing here touches a socket: the server shell feeds whatever ``recv()`` returned into
:meth:`ProxyHeaderReader.receive_data` until it returns a :class:`ProxyHeader`, then hands
:attr:`ProxyHeaderReader.leftover` (bytes that arrived after the header) to the conversation.

Errors say whose fault it was: :class:`InvalidProxyHeader` means the peer (the load balancer, or whatever connected
in its place) sent something that is not a valid header; :class:`ProxyReaderMisuse` means the caller misused the
reader.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_HEADER",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "InvalidProxyHeader",
    "ProxyCommand",
    "ProxyHeader",
    "ProxyHeaderReader",
    "ProxyProtocolError",
    "ProxyReaderMisuse",
    "parse_proxy_header",
]

#: The twelve bytes every version 2 header starts with (chosen so that no text protocol starts with them).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest version 1 header the specification allows, ``\r\n`` included.
V1_MAX_LENGTH = 107
#: Default cap on a whole header in bytes. A version 2 header may announce up to 16 + 65535 bytes; the addresses
#: need at most 232 and HAProxy adds TLVs only when configured to, so 4 KiB leaves room without inviting abuse.
DEFAULT_MAX_HEADER = 4096

_V1_PREFIX = b"PROXY "
_V2_FIXED = 16
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
# Address block sizes for version 2 families (source and destination together).
_V2_INET = 12
_V2_INET6 = 36
_V2_UNIX = 216


class ProxyProtocolError(Exception):
    """Base of this module's errors."""


class InvalidProxyHeader(ProxyProtocolError):
    """The peer did not send a valid PROXY header: its fault (a load balancer without ``send-proxy``, or a client
    connecting past the load balancer). ``reason`` says what was wrong, in words fit for a log line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProxyReaderMisuse(ProxyProtocolError):
    """The caller misused :class:`ProxyHeaderReader` (fed it after it finished): our bug, not the peer's."""


class ProxyCommand(enum.Enum):
    """What a header asks of the receiver."""

    #: A relayed connection: ``source`` and ``destination`` are the real client's and the address it reached.
    PROXY = "PROXY"
    #: The sender's own connection (a health check): use the real connection endpoints; no addresses.
    LOCAL = "LOCAL"


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header. ``source``/``destination`` are ``(host, port)`` (a path and 0 for ``AF_UNIX``), or ``None``
    when the header carries no usable address (version 1 ``UNKNOWN``, version 2 ``LOCAL`` or ``AF_UNSPEC``): then
    the receiver uses the connection's own endpoints."""

    #: 1 (text) or 2 (binary).
    version: int
    #: PROXY for a relayed connection, LOCAL for the sender's own (health checks).
    command: ProxyCommand
    #: The real client's address, or None (see the class docstring).
    source: tuple[str, int] | None
    #: The address the client connected to (the load balancer's frontend), or None.
    destination: tuple[str, int] | None
    #: Version 2 type-length-value extensions, in order, as ``(type, value)``; always empty for version 1.
    tlvs: tuple[tuple[int, bytes], ...] = ()
    #: Length of the header on the wire, in bytes.
    length: int = 0


def parse_proxy_header(data: bytes, *, max_length: int = DEFAULT_MAX_HEADER) -> tuple[ProxyHeader, bytes] | None:
    """Parse a header at the start of ``data``.

    Returns ``(header, leftover)`` with the bytes that followed the header, or ``None`` when ``data`` is a valid
    beginning that needs more bytes. Raises :class:`InvalidProxyHeader` as soon as the bytes cannot begin a valid
    header, or when the header would exceed ``max_length`` bytes.
    """
    if data[:1] == b"P":
        return _parse_v1(data, min(max_length, V1_MAX_LENGTH))
    if data[:1] == b"\r":
        return _parse_v2(data, max_length)
    if data:
        raise InvalidProxyHeader(f"no PROXY protocol header: the connection starts with {_show(data)}")
    return None


class ProxyHeaderReader:
    """Accumulates bytes until a complete header has arrived (h11-style: ``b""`` means the peer closed).

    ``receive_data`` returns the :class:`ProxyHeader` once complete (``None`` until then); :attr:`leftover` then holds
    the bytes that followed it, which belong to the application protocol. The buffer never holds more than
    ``max_length`` bytes.
    """

    def __init__(self, *, max_length: int = DEFAULT_MAX_HEADER) -> None:
        if max_length < _V2_FIXED:
            raise ValueError(f"max_length must be at least {_V2_FIXED} bytes, not {max_length}")
        self.max_length = max_length
        self.header: ProxyHeader | None = None
        self.leftover = b""
        self._buffer = b""
        self._ended = False

    def receive_data(self, data: bytes) -> ProxyHeader | None:
        """Feed bytes (``b""`` at end of input). Returns the header once complete, else ``None``.

        Raises :class:`InvalidProxyHeader` (the peer's fault: malformed, too long, or closed before the end) and
        :class:`ProxyReaderMisuse` if fed again after returning the header or after end of input.
        """
        if self.header is not None or self._ended:
            raise ProxyReaderMisuse("the PROXY header reader is finished; the rest of the bytes belong to the caller")
        if not data:
            self._ended = True
            got = f"after {len(self._buffer)} bytes" if self._buffer else "before sending anything"
            raise InvalidProxyHeader(f"connection closed {got}, without a complete PROXY protocol header")
        self._buffer += data
        parsed = parse_proxy_header(self._buffer, max_length=self.max_length)
        if parsed is None:
            # parse_proxy_header raises past max_length, so an incomplete buffer is always within the cap.
            return None
        self.header, self.leftover = parsed
        self._buffer = b""
        return self.header


# ------------------------------------------------------------------------------------------------ version 1


def _parse_v1(data: bytes, limit: int) -> tuple[ProxyHeader, bytes] | None:
    if not data.startswith(_V1_PREFIX[: len(data)]):
        raise InvalidProxyHeader(f"no PROXY protocol header: the connection starts with {_show(data)}")
    end = data.find(b"\r\n", 0, limit)
    if end < 0:
        stray = data.find(b"\n", 0, limit)
        if stray >= 0:
            raise InvalidProxyHeader("PROXY v1 header ends in a bare '\\n', not '\\r\\n'")
        if len(data) >= limit:
            raise InvalidProxyHeader(f"PROXY v1 header longer than {limit} bytes")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidProxyHeader(f"PROXY v1 header is not ASCII: {_show(line)}") from None
    parts = text.split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        # The sender could not tell the addresses (or does not want to): the rest of the line is ignored.
        return ProxyHeader(1, ProxyCommand.PROXY, None, None, length=length), data[length:]
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise InvalidProxyHeader(
            f"malformed PROXY v1 header {_show(line)}: expected 'PROXY TCP4|TCP6 src dst sport dport'"
        )
    version = ipaddress.IPv4Address if parts[1] == "TCP4" else ipaddress.IPv6Address
    source = (_v1_address(parts[2], version, parts[1]), _v1_port(parts[4]))
    destination = (_v1_address(parts[3], version, parts[1]), _v1_port(parts[5]))
    return ProxyHeader(1, ProxyCommand.PROXY, source, destination, length=length), data[length:]


def _v1_address(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address], family: str) -> str:
    try:
        return str(kind(text))
    except ValueError:
        raise InvalidProxyHeader(f"PROXY v1 header: {text!r} is not a {family} address") from None


def _v1_port(text: str) -> int:
    if _V1_PORT.fullmatch(text) is None or int(text) > 65535:
        raise InvalidProxyHeader(f"PROXY v1 header: {text!r} is not a port (0-65535, no leading zeros)")
    return int(text)


# ------------------------------------------------------------------------------------------------ version 2


def _parse_v2(data: bytes, limit: int) -> tuple[ProxyHeader, bytes] | None:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise InvalidProxyHeader(f"no PROXY protocol header: the connection starts with {_show(data)}")
    if len(data) < _V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    (body,) = struct.unpack_from("!H", data, 14)
    if version != 2:
        raise InvalidProxyHeader(f"PROXY v2 signature with version {version}")
    if command not in (0, 1):
        raise InvalidProxyHeader(f"PROXY v2 header with unknown command {command:#x}")
    total = _V2_FIXED + body
    if total > limit:
        raise InvalidProxyHeader(f"PROXY v2 header of {total} bytes, longer than the {limit}-byte cap")
    if len(data) < total:
        return None
    block = data[_V2_FIXED:total]
    if command == 0:
        # LOCAL: the sender's own connection (health checks). The address block, if any, must be ignored.
        return ProxyHeader(2, ProxyCommand.LOCAL, None, None, length=total), data[total:]
    if transport not in (0, 1, 2):
        raise InvalidProxyHeader(f"PROXY v2 header with unknown transport {transport:#x}")
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    if family == 0:  # AF_UNSPEC: unknown addresses, use the connection's own
        used, source, destination = 0, None, None
    elif family == 1:
        used = _need(block, _V2_INET, "AF_INET")
        source = (str(ipaddress.IPv4Address(block[0:4])), int.from_bytes(block[8:10], "big"))
        destination = (str(ipaddress.IPv4Address(block[4:8])), int.from_bytes(block[10:12], "big"))
    elif family == 2:
        used = _need(block, _V2_INET6, "AF_INET6")
        source = (str(ipaddress.IPv6Address(block[0:16])), int.from_bytes(block[32:34], "big"))
        destination = (str(ipaddress.IPv6Address(block[16:32])), int.from_bytes(block[34:36], "big"))
    elif family == 3:
        used = _need(block, _V2_UNIX, "AF_UNIX")
        source = (_unix_path(block[0:108]), 0)
        destination = (_unix_path(block[108:216]), 0)
    else:
        raise InvalidProxyHeader(f"PROXY v2 header with unknown address family {family:#x}")
    header = ProxyHeader(2, ProxyCommand.PROXY, source, destination, _tlvs(block[used:]), total)
    return header, data[total:]


def _need(block: bytes, size: int, family: str) -> int:
    if len(block) < size:
        raise InvalidProxyHeader(f"PROXY v2 {family} header with a {len(block)}-byte address block (needs {size})")
    return size


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _tlvs(raw: bytes) -> tuple[tuple[int, bytes], ...]:
    found: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(raw):
        if len(raw) - offset < 3:
            raise InvalidProxyHeader("PROXY v2 header with a truncated TLV")
        kind, length = raw[offset], int.from_bytes(raw[offset + 1 : offset + 3], "big")
        if offset + 3 + length > len(raw):
            raise InvalidProxyHeader(f"PROXY v2 TLV {kind:#x} announces {length} bytes past the header's end")
        found.append((kind, raw[offset + 3 : offset + 3 + length]))
        offset += 3 + length
    return tuple(found)


def _show(data: bytes, limit: int = 24) -> str:
    shown = repr(data[:limit])
    return shown + ("..." if len(data) > limit else "")
