"""The Prometheus endpoint: scrape it while clients come and go, and check the values move as they should."""

from __future__ import annotations

import socket

import gevent
import pytest
from gevent.socket import socket as GeventSocket

from geventchat import ChatClient, ChatServer, ClosedByServer, ProtocolConfig
from geventchat.config import ChatConfig
from geventchat.histogram import LatencyHistogram
from geventchat.metrics import StatsCollector
from geventchat.protocol import ErrorNotice, Reply
from geventchat.stats import ServerStats
from geventchat.testing import WaitTimedOut, wait_until

from .faultkit import metric, quiet, raw_connect, read_line, reset_close, scrape, serving


def test_metrics_follow_connections_messages_and_closes() -> None:
    config = quiet(metrics_port=0, max_connections=4, protocol=ProtocolConfig(max_line=100))
    with serving(config) as server:
        assert server.metrics is not None
        endpoint = server.metrics.address
        before = scrape(endpoint)
        assert metric(before, "geventchat_connections") == 0
        assert metric(before, "geventchat_connections_accepted_total") == 0
        assert metric(before, "process_open_fds") > 0

        held = [ChatClient.connect(*server.address, idle_timeout=30) for _ in range(3)]
        for i in range(10):
            held[0].request(f"message {i}")
        during = scrape(endpoint)
        assert metric(during, "geventchat_connections") == 3
        assert metric(during, "geventchat_connections_accepted_total") == 3
        assert metric(during, "geventchat_messages_total", direction="in") == 10
        assert metric(during, "geventchat_messages_total", direction="out") == 10
        assert metric(during, "geventchat_notices_total") == 0
        assert metric(during, "geventchat_bytes_total", direction="in") > len(b"message 0\n") * 10
        assert (
            metric(during, "geventchat_bytes_total", direction="out")
            > len("我收到了你的信息:message 0\n".encode()) * 10
        )
        assert metric(during, "geventchat_handshake_seconds_count") == 3
        assert metric(during, "geventchat_handshake_seconds_bucket", le="+Inf") == 3
        assert metric(during, "geventchat_reply_seconds_count") == 10
        assert 0 < metric(during, "geventchat_reply_seconds_sum") < 10

        # One close of each kind the server can see.
        held.pop().quit()  # quit
        wait_until(lambda: server.stats.current == 2, timeout=5)
        idle = ChatClient.connect(*server.address, idle_timeout=0.1)
        extra = ChatClient.connect(*server.address, idle_timeout=30)  # the 4th: now full
        with pytest.raises(ClosedByServer):
            ChatClient.connect(*server.address)  # server full
        with pytest.raises(ClosedByServer):
            idle.receive(timeout=5)  # idle timeout
        idle.close()
        too_long = raw_connect(server.address)
        assert read_line(too_long).startswith("你好".encode())
        too_long.sendall(b"30\n" + b"z" * 200 + b"\n")
        assert read_line(too_long) == b"bye: line too long (limit 100 bytes)\n"
        too_long.close()
        extra.close()
        reset = raw_connect(server.address)
        read_line(reset)
        reset.sendall(b"30\nhalf")
        wait_until(lambda: server.stats.current == 3, timeout=5)
        reset_close(reset)
        wait_until(lambda: server.stats.current == 2, timeout=5)
        after = scrape(endpoint)
        closed = {
            reason: metric(after, "geventchat_connections_closed_total", reason=reason)
            for reason in ("quit", "idle timeout", "server full", "line too long", "peer closed", "reset")
        }
        assert closed == {
            "quit": 1,
            "idle timeout": 1,
            "server full": 1,
            "line too long": 1,
            "peer closed": 1,
            "reset": 1,
        }
        assert metric(after, "geventchat_connections") == 2
        assert metric(after, "geventchat_connections_accepted_total") == 7
        assert metric(after, "geventchat_notices_total") == 3  # bye: server full, idle timeout, line too long
        server.shutdown(grace=2)  # the two held clients are told 'bye: server shutting down'
        for client in held:
            client.close()
    samples = [s for family in StatsCollector(server.stats).collect() for s in family.samples]
    values = {(s.name, s.labels.get("reason")): s.value for s in samples}
    assert values[("geventchat_connections", None)] == 0
    assert values[("geventchat_connections_closed_total", "server shutting down")] == 2
    assert values[("geventchat_notices_total", None)] == 5  # and the two 'bye: server shutting down'


def test_messages_out_counts_replies_and_notices_apart() -> None:
    """``in`` counts messages received, ``out`` replies written; notices are neither."""
    with serving(quiet(metrics_port=0, protocol=ProtocolConfig(max_line=100))) as server:
        assert server.metrics is not None
        with ChatClient.connect(*server.address, idle_timeout=30) as client:
            for i in range(7):
                assert client.request(f"m{i}").message == f"m{i}"
            client.sock.sendall(b"\xff\n")
            assert client.receive() == ErrorNotice("message is not valid UTF-8")
            answered = scrape(server.metrics.address)
            client.send("z" * 101)
            with pytest.raises(ClosedByServer):
                client.receive()
        wait_until(lambda: server.stats.closed.get("line too long") == 1, timeout=5)
        closed = scrape(server.metrics.address)
    assert metric(answered, "geventchat_messages_total", direction="in") == 7
    assert metric(answered, "geventchat_messages_total", direction="out") == 7
    assert metric(answered, "geventchat_notices_total") == 1  # the 'error:' line
    assert metric(closed, "geventchat_messages_total", direction="in") == 7
    assert metric(closed, "geventchat_messages_total", direction="out") == 7
    assert metric(closed, "geventchat_notices_total") == 2  # and the 'bye: line too long'


def _line(client: ChatClient) -> str:
    event = client.receive()
    assert isinstance(event, Reply), event
    return event.text


def test_room_deliveries_and_chat_overflows_are_counted() -> None:
    """Each line queued for a member is one delivery; a member whose send queue overflows is one overflow."""
    config = quiet(metrics_port=0, chat=ChatConfig(send_queue=100, room_rate=0))
    with serving(config) as server:
        assert server.metrics is not None
        clients = [ChatClient.connect(*server.address, idle_timeout=30) for _ in range(3)]
        try:
            talker, first, second = clients
            for client in clients:
                client.request(":join r")
                assert _line(client).startswith("ok: joined #r")
            joins = [_line(talker), _line(talker), _line(first)]
            assert joins == ["info: guest-2 joined #r", "info: guest-3 joined #r", "info: guest-3 joined #r"]
            before = scrape(server.metrics.address)
            talker.request("hi")
            assert _line(first) == _line(second) == "#r guest-1: hi"  # the situation: delivered
            said = scrape(server.metrics.address)
            talker.request("x" * 200)  # longer than either listener's whole send queue: both overflow at once
            wait_until(lambda: server.stats.closed.get("too slow") == 2, timeout=10, what="both to be closed")
            overflowed = scrape(server.metrics.address)
        finally:
            for client in clients:
                client.close()
    assert metric(before, "geventchat_room_deliveries_total") == 3  # 'info: … joined': 1 for the 2nd, 2 for the 3rd
    assert metric(said, "geventchat_room_deliveries_total") == 3 + 2
    assert metric(before, "geventchat_chat_overflows_total") == metric(said, "geventchat_chat_overflows_total") == 0
    assert metric(overflowed, "geventchat_chat_overflows_total") == 2
    assert metric(overflowed, "geventchat_room_deliveries_total") == server.stats.deliveries


def test_replies_a_client_never_reads_are_not_counted_as_sent() -> None:
    """A client that sends and never reads: the server's send blocks, the idle timeout ends the connection, and the
    replies it could not write are received (``in``) but not sent (``out``)."""
    with serving(quiet(metrics_port=0)) as server:
        assert server.metrics is not None
        sock = GeventSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no autotuning
        sock.connect(server.address)
        assert read_line(sock).startswith("你好".encode())
        sock.sendall(b"0.5\n")
        line = b"y" * 32768 + b"\n"
        sent = 0
        # Bounded: 2,000 lines (64 MB, several times what the loopback buffers hold) or 10 s.
        with gevent.Timeout(10, WaitTimedOut):
            while sent < 2000:
                try:
                    sock.sendall(line)
                except OSError:  # the server closed at the idle timeout, with our input unread: a reset
                    break
                sent += 1
        wait_until(lambda: server.stats.closed.get("idle timeout") == 1, timeout=5)
        sock.close()
        samples = scrape(server.metrics.address)
    received = metric(samples, "geventchat_messages_total", direction="in")
    written = metric(samples, "geventchat_messages_total", direction="out")
    assert 0 < received <= sent, (received, sent)  # the server did read and answer before its sends blocked
    assert written < received, (written, received)


def test_resets_are_counted_under_one_reason() -> None:
    """Whatever errno text a peer's reset produces, the close is counted (and labelled) as 'reset'."""
    with serving(quiet()) as server:
        for _ in range(3):
            sock = raw_connect(server.address)
            read_line(sock)  # the greeting
            sock.sendall(b"half a li")
            reset_close(sock)  # while the server waits for the rest of the line
        wait_until(lambda: server.stats.total == 3 and server.stats.current == 0, timeout=5)
        assert server.stats.closed == {"reset": 3}


def test_latency_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = LatencyHistogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 5.0):
        histogram.observe(seconds)
    assert histogram.cumulative() == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.sum == pytest.approx(5.0035)
    with pytest.raises(ValueError):
        LatencyHistogram((0.1, 0.01))


def test_histograms_are_off_without_metrics() -> None:
    stats = ServerStats()
    names = {family.name for family in StatsCollector(stats).collect()}
    assert "geventchat_reply_seconds" not in names and stats.reply_latency is None


def test_a_worker_endpoint_labels_its_series() -> None:
    server = ChatServer(quiet(metrics_port=0), metrics_labels={"worker": "3"})
    server.start()
    try:
        assert server.metrics is not None
        ChatClient.connect(*server.address, idle_timeout=5).quit()
        samples = scrape(server.metrics.address)
        assert metric(samples, "geventchat_connections_accepted_total", worker="3") == 1
        assert metric(samples, "geventchat_connections_accepted_total") == 0  # no unlabelled series
    finally:
        server.stop()


def test_const_labels_mark_every_series() -> None:
    stats = ServerStats(
        current=2, total=5, messages=7, replies=6, notices=1, bytes_in=70, bytes_out=90, closed={"quit": 3}
    )
    stats.reply_latency = LatencyHistogram((0.01,))
    stats.reply_latency.observe(0.001)
    samples = [s for family in StatsCollector(stats, {"worker": "1"}).collect() for s in family.samples]
    assert samples and all(s.labels.get("worker") == "1" for s in samples)
    values = {
        (s.name, s.labels.get("reason") or s.labels.get("direction") or s.labels.get("le")): s.value for s in samples
    }
    assert values[("geventchat_connections", None)] == 2
    assert values[("geventchat_connections_closed_total", "quit")] == 3
    assert values[("geventchat_bytes_total", "out")] == 90
    assert values[("geventchat_messages_total", "in")] == 7
    assert values[("geventchat_messages_total", "out")] == 6
    assert values[("geventchat_notices_total", None)] == 1
    assert values[("geventchat_reply_seconds_bucket", "0.01")] == 1
