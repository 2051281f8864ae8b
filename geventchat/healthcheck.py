"""``geventchat check [--host H] [--port P]`` and ``python -m geventchat.healthcheck [HOST [PORT]]`` (the form the
Dockerfile uses, kept so existing images work): exit 0 if a geventchat server there greets, else 1.

For container health checks (the Dockerfile's ``HEALTHCHECK``). Plain blocking sockets, no gevent: it runs once
and exits. It sends ``PROXY UNKNOWN\\r\\n`` first, so a server started with ``--proxy-protocol`` accepts it as a
local connection; a server without the flag greets first and answers that line with an ``error:`` line, which the
check never reads. A ``bye:`` (``server full``, ``server shutting down``) instead of a greeting is unhealthy.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence

from .config import DEFAULT_PORT
from .protocol import BYE_PREFIX, Bye, ClientConversation, Greeting, RemoteProtocolError, quote_peer_text

__all__ = ["check_server", "main"]

#: Sent before anything else: a PROXY v1 header saying "no client address" (what a health check is).
PROXY_UNKNOWN = b"PROXY UNKNOWN\r\n"
#: Longest greeting we read; a server's greeting is one short line.
_MAX_GREETING = 4096


def check_server(host: str, port: int, timeout: float = 2.0) -> str | None:
    """``None`` if the server at ``host:port`` sends a greeting line within ``timeout`` seconds, else what went
    wrong (one line). The server's bytes go through the protocol core, as every client's do."""
    conversation = ClientConversation(max_line=_MAX_GREETING)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(PROXY_UNKNOWN)
            while True:
                for event in conversation.receive_data(sock.recv(_MAX_GREETING)):
                    if isinstance(event, Greeting):
                        return None
                    if isinstance(event, Bye):
                        return f"no greeting: {quote_peer_text(BYE_PREFIX + event.reason, 80)}"
                    return "closed without a greeting"
    except RemoteProtocolError as exc:
        return f"no greeting: {exc}"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 2 or any(a.startswith("-") for a in args):
        print("usage: python -m geventchat.healthcheck [HOST [PORT]]", file=sys.stderr)
        return 2
    host = args[0] if args else "127.0.0.1"
    try:
        port = int(args[1]) if len(args) > 1 else DEFAULT_PORT
    except ValueError:
        print(f"geventchat healthcheck: {args[1]!r} is not a port", file=sys.stderr)
        return 2
    problem = check_server(host, port)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
