"""Chat across server processes on one real redis-server (``--redis``): two ``python -m geventchat`` processes, line
clients on each, exact lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from geventchat.testing import ServerProcess, wait_until
from tests.redis_server import RedisServer, redis_server
from tests.test_chat_server import PREFIX, NoLine, Peer

__all__ = ["redis_server"]  # the fixture, used by name

UNAVAILABLE = "error: rooms unavailable (broker unreachable)"


@pytest.fixture
def pair(
    redis_server: RedisServer, server_process: Callable[..., ServerProcess]
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    yield (
        server_process("--redis", redis_server.url, "--presence-ttl", "3"),
        server_process("--redis", redis_server.url, "--presence-ttl", "3"),
    )


def connected(process: ServerProcess, nick: str) -> Peer:
    """A client on ``process`` named ``nick``. No retry: a server prints its listening line only once its broker
    answered, so rooms work from the first client on."""
    peer = Peer((process.host, process.port))
    assert peer.command(f":nick {nick}") == f"ok: you are {nick}"
    return peer


def test_a_room_and_a_private_message_span_two_servers(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    alice, bob = connected(a, "alice"), connected(b, "bob")
    try:
        assert alice.command(":join lobby") == "ok: joined #lobby (1 member)"
        assert bob.command(":join lobby") == "ok: joined #lobby (2 members)"
        assert alice.line() == "info: bob joined #lobby"
        alice.say("hello from A")
        assert bob.line() == "#lobby alice: hello from A"
        bob.say("hello from B")
        assert alice.line() == "#lobby bob: hello from B"
        assert bob.command(":msg alice psst") == "ok: sent to alice"
        assert alice.line() == "@bob: psst"
        assert alice.command(":who") == "ok: #lobby 2: alice bob"
        bob.say(":q")
        assert alice.line() == "info: bob left #lobby (quit)"
    finally:
        alice.close()
        bob.close()


def test_redis_killed_and_restarted_under_a_running_room(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer
) -> None:
    a, b = pair
    alice, bob = connected(a, "alice"), connected(b, "bob")
    try:
        assert alice.command(":join r") == "ok: joined #r (1 member)"
        assert bob.command(":join r") == "ok: joined #r (2 members)"
        assert alice.line() == "info: bob joined #r"

        redis_server.stop()
        assert not redis_server.ping()
        # Echo goes on; room commands say the broker is unreachable (once each server has noticed).
        wait_until(lambda: alice.command(":who") == UNAVAILABLE, what="A to notice the broker is gone", interval=0.05)
        alice.send("still echoing")
        assert alice.line() == PREFIX + "still echoing"
        assert alice.line() == UNAVAILABLE  # a room line cannot be delivered now
        assert bob.command(":rooms") == UNAVAILABLE

        redis_server.start()  # same port, empty: the servers put their members back
        wait_until(
            lambda: alice.command(":who") == "ok: #r 2: alice bob",
            what="the room to be back",
            timeout=30,
            interval=0.05,
        )

        def delivered() -> bool:
            alice.say("are you there")
            try:
                return bob.line(1) == "#r alice: are you there"
            except NoLine:
                return False

        # B re-subscribes on its own schedule (back-off): lines published before that are lost to it (at most once).
        wait_until(delivered, what="a room line from A to reach B again", timeout=30)
    finally:
        alice.close()
        bob.close()


def test_a_server_shutting_down_parts_its_members_on_the_other(pair: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = pair
    alice, bob = connected(a, "alice"), connected(b, "bob")
    try:
        assert alice.command(":join r") == "ok: joined #r (1 member)"
        assert bob.command(":join r") == "ok: joined #r (2 members)"
        assert alice.line() == "info: bob joined #r"
        a.send_signal()  # SIGTERM: graceful
        assert alice.line() == "bye: server shutting down"
        alice.close()
        assert bob.line(10) == "info: alice left #r (server shutting down)"
        assert a.wait() == 0
    finally:
        alice.close()
        bob.close()
