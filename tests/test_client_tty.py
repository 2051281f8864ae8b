"""The interactive client, on a pseudo-terminal as a user runs it: its stdin is a terminal, so it prompts."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator

import gevent.subprocess
import pytest
from gevent.socket import wait_read

from geventchat.config import DEFAULT_GREETING, Framing
from geventchat.server import ChatServer
from geventchat.testing import ServerProcess

from .test_client import PREFIX, TUTORIAL_GREETING, HoldingServer

#: Ctrl-D at the start of a line: the terminal ends the input (read() returns nothing).
EOT = b"\x04"


class Terminal:
    """``python -m geventchat client ARGS`` with stdin and stdout on a pseudo-terminal; we hold the other side."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        self.proc = gevent.subprocess.Popen(
            [sys.executable, "-m", "geventchat", "client", *args],
            stdin=slave,
            stdout=slave,
            stderr=gevent.subprocess.PIPE,
            env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        )
        os.close(slave)  # the child's copy only: the terminal goes away (EIO) when the client exits
        #: Everything the client wrote to the terminal (and the terminal's echo of what we typed).
        self.shown = bytearray()

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, text: str, timeout: float = 8.0) -> None:
        """Read the terminal until ``text`` appears; no sleeps, one deadline (a client that is not started within
        it on a loaded machine is a failure worth seeing, not a margin)."""
        expected = text.encode()
        deadline = time.monotonic() + timeout
        while expected not in self.shown:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not shown within {timeout}s; the terminal shows {bytes(self.shown)!r}")
            try:
                wait_read(self.master, timeout=remaining)
                self.shown += os.read(self.master, 4096)
            except TimeoutError:
                continue  # the deadline check above ends the loop
            except OSError as exc:  # EIO: the client exited and its terminal is gone
                stderr = self.finish(timeout=5)[1]
                raise AssertionError(
                    f"{text!r} never shown; the client ended ({exc}); terminal {bytes(self.shown)!r}; stderr {stderr}"
                ) from None

    def finish(self, timeout: float = 8.0) -> tuple[int, str]:
        """Wait for the client to exit (bounded); its exit code and stderr."""
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(*args: str) -> Terminal:
        opened.append(Terminal(*args))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


def test_interactive_client_greets_answers_and_quits_on_ctrl_d(
    server_process: Callable[..., ServerProcess], terminal: Callable[..., Terminal]
) -> None:
    server = server_process()
    term = terminal("--port", str(server.port), "--timeout", "30")
    term.wait_for(DEFAULT_GREETING)
    term.wait_for("> ")
    term.type(b"hello\n")
    term.wait_for(PREFIX + "hello")
    term.type(EOT)
    term.wait_for(PREFIX + ":q")  # Ctrl-D sent ':q', and its reply is shown
    code, stderr = term.finish()
    assert code == 0, stderr
    assert stderr == ""


def test_interactive_client_quits_against_a_server_that_never_closes(terminal: Callable[..., Terminal]) -> None:
    stub = HoldingServer(Framing.RAW)
    try:
        term = terminal("--port", str(stub.address[1]), "--framing", "raw")
        term.wait_for(TUTORIAL_GREETING)
        term.type(b"hi\n")
        term.wait_for(PREFIX + "hi")
        term.type(b":q\n")
        term.wait_for(PREFIX + ":q")
        # The bound is under the 10 s reply timeout: a client waiting for the server's close would not exit.
        code, stderr = term.finish(timeout=8)
        assert code == 0, stderr
        assert stderr == ""
        assert stub.client_closed.wait(5), "the client did not close after the reply to ':q'"
    finally:
        stub.server.stop()


def test_interactive_client_says_when_quit_is_not_answered(terminal: Callable[..., Terminal]) -> None:
    stub = HoldingServer(Framing.LINE, answer_quit=False)
    try:
        term = terminal("--port", str(stub.address[1]), "--reply-timeout", "1")
        term.wait_for(TUTORIAL_GREETING)
        term.type(b":q\n")
        term.wait_for("geventchat client: no answer to ':q' within 1s")
        code, _stderr = term.finish()
        assert code == 1
    finally:
        stub.server.stop()


def test_chat_lines_from_others_are_marked_and_escaped(
    terminal: Callable[..., Terminal], start_server: Callable[..., ChatServer]
) -> None:
    from .test_chat_server import Peer

    server = start_server()
    bob = Peer(server.address)
    try:
        assert bob.command(":nick bob") == "ok: you are bob"
        assert bob.command(":join r") == "ok: joined #r (1 member)"
        term = terminal("--port", str(server.address[1]))
        term.wait_for("> ")
        term.type(b":nick carol\n")
        term.wait_for("ok: you are carol")
        term.type(b":join r\n")
        term.wait_for("ok: joined #r (2 members)")
        assert bob.line() == "info: carol joined #r"
        bob.say("hi \x1b[31mred")
        term.wait_for("[room] #r bob: hi \\x1b[31mred")
        assert bob.command(":msg carol psst") == "ok: sent to carol"
        term.wait_for("[private] @bob: psst")
        bob.say(":q")
        term.wait_for("[info] info: bob left #r (quit)")
        term.type(b"plain\n")
        term.wait_for(f"\r{PREFIX}plain")  # the echo reply: no marker
        assert b"\x1b[31m" not in term.shown  # the escape sequence never reached the terminal as is
        term.type(b":q\n")
        assert term.finish()[0] == 0
    finally:
        bob.close()
