"""``geventchat client``: a line client on a terminal (interactive) or in a pipe (one reply per line).

:mod:`geventchat.cli` parses the options (:func:`geventchat.options.client_parser`) and calls :func:`run_client`.
"""

from __future__ import annotations

import argparse
import sys

import gevent
import gevent.event

from .client import ChatClient, ChatClientError, ClosedByServer
from .config import Framing
from .protocol import QUIT, ErrorNotice, Reply, escape_controls

__all__ = ["run_client", "shown_line"]

#: How the interactive client marks what other users sent (room and private lines) and room events, so they never
#: pass for the echo of what you typed. The server's own marker stays in the line: nothing is hidden.
_MARKS = (("#", "[room] "), ("@", "[private] "), ("info: ", "[info] "))
#: How the lines a server sends unasked (or after an echo) begin: none of them is the echo of a line we sent.
_NOT_ECHOES = ("#", "@", "info: ", "ok: ")


def shown_line(text: str, prefix: str) -> str:
    """A server line as the interactive client prints it: control characters escaped (other users' text must not
    drive your terminal), and room, private and info lines marked (see :data:`_MARKS`). Echo replies (starting
    with ``prefix``) and everything else are shown as they are."""
    if not (prefix and text.startswith(prefix)):
        for start, mark in _MARKS:
            if text.startswith(start):
                return mark + escape_controls(text)
    return escape_controls(text)


def run_client(args: argparse.Namespace) -> int:
    """Connect as ``args`` say and talk until the input or the conversation ends; returns the exit status (0, 1 on
    any failure, 130 on Ctrl-C)."""
    framing = Framing(args.framing)
    tls = None
    if args.tls or args.tls_ca:
        from .tls import client_context

        try:
            tls = client_context(args.tls_ca)
        except OSError as exc:
            print(f"geventchat client: cannot load the CA file: {exc.strerror or exc}", file=sys.stderr)
            return 1
    try:
        client = ChatClient.connect(
            args.host,
            args.port,
            idle_timeout=args.timeout,
            connect_timeout=args.connect_timeout,
            reply_timeout=args.reply_timeout,
            framing=framing,
            prefix=args.prefix,
            tls=tls,
        )
    except ChatClientError as exc:
        print(f"geventchat client: {exc}", file=sys.stderr)
        return 1
    with client:
        try:
            if sys.stdin.isatty():
                return _interactive(client, args.prefix)
            return _piped(client, args.prefix)
        except ChatClientError as exc:  # refused, reset, timed out, or a 'bye:' (ClosedByServer)
            print(f"geventchat client: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


def _piped(client: ChatClient, prefix: str) -> int:
    """Send each stdin line, print every line the server sent as it sent it; ':q' at the end of input. After each
    line, reads up to its echo: lines that come before it (room, private and info lines from others, the answer to
    the previous command) are printed too, so chat output never shifts the echoes out of step."""
    print(client.greeting, flush=True)
    for raw in sys.stdin:
        line = raw.rstrip("\r\n")
        if line == ":q":
            break
        client.send(line)
        _print_until_echo(client, prefix + line)
    client.send_quit()
    _print_until_echo(client, prefix + ":q")
    client.raise_pending_bye()
    client.close()
    return 0


def _print_until_echo(client: ChatClient, echo: str) -> None:
    """Print what arrives up to the echo ``echo`` (``error:`` lines on stderr). A line that is not a room, private,
    info or ``ok:`` line counts as the echo too: a server with another prefix (the tutorial's) still ends the wait.
    Each read is bounded by the reply timeout."""
    while True:  # bounded: every pass reads one line, or raises ReplyTimeout / ClosedByServer
        event = client.receive()
        if isinstance(event, Reply):
            print(event.text, flush=True)
            if event.text == echo or not event.text.startswith(_NOT_ECHOES):
                return
        elif isinstance(event, ErrorNotice):
            print(f"error: {escape_controls(event.reason)}", file=sys.stderr, flush=True)


def _interactive(client: ChatClient, prefix: str) -> int:
    """A prompt; server lines (replies, notices, a bye) are printed as they arrive, even while you type. The session
    ends with the reply to ':q' (typed, or sent on Ctrl-D), without waiting for the server to close."""
    from gevent.socket import wait_read

    # On a terminal the server's text is escaped: a hostile server must not drive the terminal.
    print(escape_controls(client.greeting or ""))
    done = gevent.event.Event()
    outcome: list[int] = []

    def show_server_lines() -> None:
        try:
            while True:
                event = client.receive(timeout=10**9)
                text = event.text if isinstance(event, Reply) else f"error: {event.reason}"  # type: ignore[union-attr]
                if isinstance(event, Reply) and event.message == QUIT:
                    # The reply to our ':q' (this client sends ':q' only to quit): the end. The server's close is
                    # not awaited, as the tutorial's server never closes; a 'bye:' already here is still shown.
                    print(f"\r{escape_controls(text)}", flush=True)
                    client.raise_pending_bye()
                    outcome.append(0)
                    break
                print(f"\r{shown_line(text, prefix)}\n> ", end="", flush=True)
        except ClosedByServer as exc:
            # A plain close after our ':q' is the normal end; a 'bye:' says why the server ended it.
            print(f"\r{exc}" if exc.reason is not None else "\r", flush=True)
            outcome.append(0 if exc.reason is None else 1)
        except ChatClientError as exc:
            print(f"\rgeventchat client: {exc}", flush=True)
            outcome.append(1)
        done.set()

    reader = gevent.spawn(show_server_lines)
    print("> ", end="", flush=True)
    fd = sys.stdin.fileno()
    while not done.is_set():
        try:
            wait_read(fd, timeout=0.2)
            line = sys.stdin.readline()
        except TimeoutError:
            continue
        except OSError:
            line = ""  # no input any more: quit as on Ctrl-D
        text = line.rstrip("\r\n") if line else QUIT  # Ctrl-D quits like :q
        if text == QUIT:
            client.send_quit()
            break
        client.send(text)
    if not done.wait(client.reply_timeout):
        reader.kill()
        print(f"\rgeventchat client: no answer to ':q' within {client.reply_timeout:g}s", flush=True)
        return 1
    return outcome[0]
