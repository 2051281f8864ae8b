"""RoomUser against a real in-process chat server: rooms filled in order, ``fanout`` timed per delivery, and
delivered == expected while membership is stable (the run starts every user at once, so the rooms fill before
anyone speaks, and senders stop before users leave).

Like :mod:`tests.test_loadtest_runs`, every Locust run is a subprocess (importing Locust monkey-patches).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from geventchat.config import ChatConfig
from geventchat.loadtest.rooms import FanoutTally, format_fanout, room_name
from geventchat.loadtest.settings import BadSettings, Settings
from geventchat.server import ChatServer

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
