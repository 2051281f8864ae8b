"""RoomUser against a real in-process chat server: rooms filled in order, ``fanout`` timed per delivery, and
delivered == expected while membership is stable (the run starts every user at once, so the rooms fill before
anyone speaks, and senders stop before users leave).

Like :mod:`tests.test_loadtest_runs`, every Locust run is a subprocess (importing Locust monkey-patches).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from geventchat.config import DEFAULT_PREFIX, ChatConfig
from geventchat.loadtest.latency import LatencyRecorder
from geventchat.loadtest.rooms import FanoutTally, RoomSession, format_fanout, room_name
from geventchat.loadtest.session import RunContext
from geventchat.loadtest.settings import BadSettings, Settings
from geventchat.loadtest.target import parse_targets
from geventchat.server import ChatServer
from geventchat.testing import wait_until

from .test_loadtest_runs import latency, locust_on_two_processes, run_users


def test_rooms_are_filled_in_order_per_worker() -> None:
    names = [room_name(0, n, 3) for n in range(7)]
    assert names == ["lt0-1"] * 3 + ["lt0-2"] * 3 + ["lt0-3"]
    assert room_name(1, 0, 3) == "lt1-1" != room_name(0, 0, 3)


def test_fanout_tally_ships_deltas_and_the_master_adds_them_up() -> None:
    worker, master = FanoutTally(), FanoutTally()
    worker.sent, worker.expected, worker.delivered = 5, 10, 9
    master.add_report(worker.take_report())
    worker.sent, worker.refused, worker.expected, worker.delivered = 2, 1, 2, 3  # after the report: afresh
    master.add_report(worker.take_report())
    assert worker.as_dict()["sent"] == worker.as_dict()["refused"] == 0
    assert master.as_dict() == {"sent": 7, "refused": 1, "expected": 12, "delivered": 12, "loss": 0, "loss_ratio": 0.0}
    master.delivered = 9
    assert format_fanout(master).endswith("loss 3 (25.00%); 1 refused by the server (not expected)")


def test_room_size_must_be_at_least_one() -> None:
    assert Settings(room_size=1).room_size == 1
    with pytest.raises(BadSettings, match="--gc-room-size"):
        Settings(room_size=0)


def test_room_rate_is_a_rate_of_zero_or_more() -> None:
    assert Settings().room_rate == 20.0  # the server's --room-rate default: RoomUser stays under it unless told
    with pytest.raises(BadSettings, match="--gc-room-rate"):
        Settings(room_rate=-1.0)


class _StubRoomServer:
    """A scripted chat server on loopback for one connection: greets, answers ``:join`` with 3 members, and answers
    the first message it reads with ``after_message`` (its echo is written as ``{echo}``)."""

    def __init__(self, after_message: str) -> None:
        self.after_message = after_message
        self.listener = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.address: tuple[str, int] = self.listener.getsockname()
        self.greenlet = gevent.spawn(self._serve)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"welcome\n")
            join = lines.readline().decode().rstrip("\n")
            conn.sendall(f"{DEFAULT_PREFIX}{join}\nok: joined #r (3 members)\n".encode())
            message = lines.readline().decode().rstrip("\n")
            conn.sendall(self.after_message.format(echo=DEFAULT_PREFIX + message, message=message).encode())
            lines.readline()  # until the client closes

    def close(self) -> None:
        self.greenlet.kill()
        self.listener.close()


@pytest.fixture
def room_session() -> Iterator[Callable[[str], RoomSession]]:
    """``room_session(after_message)``: a RoomSession joined to room ``r`` of a :class:`_StubRoomServer`."""
    made: list[tuple[RoomSession, _StubRoomServer, RunContext]] = []

    def make(after_message: str) -> RoomSession:
        server = _StubRoomServer(after_message)
        host, port = server.address
        context = RunContext(Settings(reply_timeout=5.0), parse_targets(f"{host}:{port}"), LatencyRecorder())
        environment: Any = SimpleNamespace(events=SimpleNamespace(request=SimpleNamespace(fire=lambda **_: None)))
        session = RoomSession(environment, "RoomUser", context, "u1")
        made.append((session, server, context))
        assert session.connect(None) and session.join("r") and session.members == 3
        return session

    yield make
    for session, server, context in made:
        session.close()
        server.close()
        context.watchdog.close()


def test_an_error_after_a_room_line_is_not_charged_to_the_echo_before_it(
    room_session: Callable[[str], RoomSession],
) -> None:
    # The echo, then a room line from someone else, then an 'error:' that follows no echo of ours.
    session = room_session("{echo}\n#r u2: m u2 1 1\nerror: unknown command\n")
    assert session.say()
    tally = session.tally
    wait_until(lambda: tally.delivered == 1 and bool(tally.refused or session._replies.qsize()), what="the error")
    assert tally.sent == 1 and tally.expected == 2  # the message counted for the 2 others
    assert tally.refused == 0  # the error refused nothing: it did not follow the echo
    assert session._replies.get_nowait().reason == "unknown command"  # it is left as an error that follows no echo


def test_an_error_right_after_the_echo_is_charged_to_that_message(
    room_session: Callable[[str], RoomSession],
) -> None:
    session = room_session("{echo}\nerror: too fast, not delivered\n")
    assert session.say()
    wait_until(lambda: session.tally.refused == 1, what="the refusal")
    assert session.tally.sent == 1 and session.tally.expected == 0  # refused: the others will not receive it
    assert session._replies.empty()


def test_room_users_report_fanout_and_deliver_every_expected_line(
    start_server: Callable[..., ChatServer], tmp_path: Path
) -> None:
    host, port = start_server(linger=0.5).address
    summary = run_users(
        "--host",
        f"{host}:{port}",
        "--users",
        "6",
        "--seconds",
        "2",
        "RoomUser",
        "--gc-room-size",
        "3",
        "--gc-think-time",
        "0.1",  # 10 messages/s per user: under the server's --room-rate of 20
        cwd=tmp_path,
    )
    assert summary["exit_code"] == 0, summary["causes"]
    assert summary["causes"] == {}
    by_step = summary["by_scenario"]["RoomUser"]
    assert by_step["join"]["requests"] == 6
    assert by_step["echo"]["requests"] > 0 and by_step["fanout"]["requests"] > 0
    fanout = latency(summary, "RoomUser", "fanout")
    assert fanout["count"] == by_step["fanout"]["requests"] and fanout["min"] <= fanout["p50"] <= fanout["max"]
    figures = summary["fanout"]
    # Two rooms of three: every message reaches the two other members.
    # A message is counted as it goes: a user stopped while waiting for its echo has sent one without an echo row.
    assert figures["sent"] - 6 <= by_step["echo"]["requests"] <= figures["sent"]
    assert figures["expected"] == 2 * figures["sent"]
    assert figures["delivered"] == figures["expected"] == by_step["fanout"]["requests"]
    assert figures["loss"] == 0


def test_messages_the_server_refuses_are_counted_apart_and_never_taken_for_the_next_echo(
    start_server: Callable[..., ChatServer], tmp_path: Path
) -> None:
    # The server allows 2 messages/s (bursts of 4); the users send far faster: most get 'error: too fast' after
    # their echo. Each such error must be its own message's, not the next message's reply.
    host, port = start_server(linger=0.5, chat=ChatConfig(room_rate=2.0)).address
    summary = run_users(
        "--host",
        f"{host}:{port}",
        "--users",
        "6",
        "--seconds",
        "2",
        "RoomUser",
        "--gc-room-size",
        "3",
        "--gc-room-rate",
        "0",  # no pacing: past the server's rate on purpose
        "--gc-think-time",
        "0.02",
        cwd=tmp_path,
    )
    figures = summary["fanout"]
    by_step = summary["by_scenario"]["RoomUser"]
    assert figures["refused"] > 0  # the situation: the server refused messages
    assert summary["causes"] == {"refused": {"too fast, not delivered": figures["refused"]}}  # and nothing else
    assert by_step["echo"]["failures"] == 0  # no step took another message's error for its echo
    assert figures["expected"] == 2 * (figures["sent"] - figures["refused"])  # refused ones are not expected
    assert figures["delivered"] == figures["expected"] == by_step["fanout"]["requests"]
    assert figures["loss"] == 0


def test_room_users_on_two_worker_processes_merge_their_counts(
    start_server: Callable[..., ChatServer], tmp_path: Path
) -> None:
    host, port = start_server(linger=0.5).address
    completed = locust_on_two_processes(
        host,
        port,
        "-u",
        "6",
        "-r",
        "6",
        "-t",
        "3s",
        "--gc-room-size",
        "3",
        "--gc-think-time",
        "0.1",
        "RoomUser",
        cwd=tmp_path,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    match = re.search(r"RoomUser fan-out: delivered (\d+) of (\d+) expected \((\d+) messages\), loss (-?\d+)", output)
    assert match is not None, output[-3000:]
    delivered, expected, sent, loss = (int(g) for g in match.groups())
    # The master printed the workers' counts added up: both rooms of three spoke, every line arrived.
    assert sent > 0 and expected == 2 * sent
    assert delivered == expected and loss == 0
    assert any(line.split()[:2] == ["RoomUser", "fanout"] and "|" in line for line in output.splitlines())
