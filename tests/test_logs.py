"""``--log-format json`` and ``--log-file``: every log line of a short real run is one JSON object; the listening
line stays plain text on stdout."""

from __future__ import annotations

import json
import logging
import re
import signal
from pathlib import Path

from geventchat.client import ChatClient
from geventchat.logs import JsonFormatter
from geventchat.testing import QUIET, ServerProcess, format_listening_line

HOSTILE = 'a\x1b[31m"b\\c\u202e'  # an escape sequence, a quote, a backslash and a bidi override


def parse_lines(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert lines, "no log lines at all"
    records = [json.loads(line) for line in lines]  # raises on any line that is not one JSON object
    assert all(isinstance(record, dict) for record in records)
    return records


def test_json_lines_with_peer_and_reason_and_the_listening_line_unchanged() -> None:
    with ServerProcess(*QUIET, "--log-format", "json", "--log-level", "DEBUG") as server:
        with ChatClient.connect(server.host, server.port, idle_timeout=30) as client:
            peer = "{}:{}".format(*client.sock.getsockname()[:2])
            assert client.request(HOSTILE).message == HOSTILE
        server.send_signal(signal.SIGTERM)
        code = server.wait(10)
        err, stdout = server.stderr_text(), server.stdout
    assert code == 0, err
    records = parse_lines(err)
    assert all({"time", "level", "logger", "event", "pid"} <= set(record) for record in records)
    assert {record["level"] for record in records} >= {"INFO", "DEBUG"}
    mine = [record for record in records if record.get("peer") == peer]
    assert any(str(record["event"]).endswith(" connected") for record in mine), mine
    assert [record["reason"] for record in mine if "reason" in record] == ["peer closed"]
    # The peer's bytes reach the log only escaped: no raw control or bidi character on any line.
    assert not re.search("[\x00-\x1f\x7f\u202e]", err.replace("\n", ""))
    assert any("shutting down" in str(record["event"]) for record in records)
    # The plain listening line (ServerProcess read the port from it) is the only stdout line.
    assert stdout == [format_listening_line(server.address)]


def test_log_file_gets_every_process_line_as_json(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    args = ["--workers", "2", *QUIET, "--log-format", "json", "--log-file", str(log_file)]
    with ServerProcess(*args, "--log-level", "DEBUG") as server:
        port = server.port
        clients = [ChatClient.connect("127.0.0.1", port, idle_timeout=30) for _ in range(10)]
        for client in clients:
            assert client.request("to the file").message == "to the file"
            client.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert server.stderr == []  # everything went to the file
        assert server.stdout == [f"geventchat listening on 127.0.0.1:{port}"]
    records = parse_lines(log_file.read_text(encoding="utf-8"))
    pids = {record["pid"] for record in records}
    assert len(pids) == 3, pids  # the supervisor and both workers wrote whole lines into the one file
    assert sum(1 for record in records if record.get("reason") == "peer closed") == 10


def test_extra_peer_and_reason_win_and_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("geventchat.server", logging.ERROR, __file__, 1, "failed", (), exc_info)
    record.peer = "[::1]:5"
    record.reason = "internal error"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert (parsed["peer"], parsed["reason"], parsed["event"]) == ("[::1]:5", "internal error", "failed")
    assert "ValueError: boom\nsecond line" in parsed["exception"]
