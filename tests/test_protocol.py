"""The sans-IO core with bytes alone: no sockets, no gevent, no clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pytest

from geventchat.config import Framing, ProtocolConfig
from geventchat.protocol import (
    Bye,
    ClientConversation,
    CloseReason,
    ConnectionClosed,
    ErrorNotice,
    FramingChosen,
    Greeting,
    InvalidTimeout,
    LocalProtocolError,
    MessageReceived,
    MessageRejected,
    QuitReceived,
    RemoteProtocolError,
    Reply,
    ServerConversation,
    TimeoutNegotiated,
    TimeoutRejected,
    parse_timeout,
    quote_peer_text,
)

PREFIX = "我收到了你的信息:".encode()
GREETING = "你好,我是geventchat~\n".encode()


def chunks_whole(data: bytes) -> list[bytes]:
    return [data]


def chunks_bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def chunks_sevens(data: bytes) -> list[bytes]:
    return [data[i : i + 7] for i in range(0, len(data), 7)]


SPLITS = [chunks_whole, chunks_bytewise, chunks_sevens]


def run_server(
    chunks: Iterable[bytes], config: ProtocolConfig | None = None, *, eof: bool = False
) -> tuple[list[object], bytes, ServerConversation]:
    """Feed chunks to a fresh server conversation; returns (events, everything it queued after the greeting)."""
    conv = ServerConversation(config or ProtocolConfig(framing=Framing.LINE))
    greeting = conv.data_to_send()
    assert greeting
    events: list[object] = []
    out = b""
    for chunk in chunks:
        if conv.closed:
            break
        events += conv.receive_data(chunk)
        out += conv.data_to_send()
    if eof and not conv.closed:
        events += conv.receive_data(b"")
        out += conv.data_to_send()
    return events, out, conv


def messages(events: Sequence[object]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageReceived)]


# --------------------------------------------------------------------------------------------------- server


def test_greeting_is_queued_on_construction() -> None:
    conv = ServerConversation(ProtocolConfig())
    assert conv.data_to_send() == GREETING
    assert conv.data_to_send() == b""


@pytest.mark.parametrize("split", SPLITS)
def test_full_conversation_whatever_the_chunking(split: Callable[[bytes], list[bytes]]) -> None:
    stream = b"30\nhello\n\n:q\n"
    events, out, conv = run_server(split(stream))
    assert TimeoutNegotiated(30.0, 30.0) in events
    assert messages(events) == [b"hello", b"", b":q"]
    assert out == PREFIX + b"hello\n" + PREFIX + b"\n" + PREFIX + b":q\n"
    assert isinstance(events[-1], ConnectionClosed) and events[-1].reason is CloseReason.QUIT
    assert QuitReceived() in events
    assert conv.closed and conv.idle_timeout == 30.0


@pytest.mark.parametrize("split", SPLITS)
def test_crlf_is_dropped(split: Callable[[bytes], list[bytes]]) -> None:
    events, out, _ = run_server(split(b"5\r\nhi\r\n\r\n"))
    assert messages(events) == [b"hi", b""]
    assert out == PREFIX + b"hi\n" + PREFIX + b"\n"


def test_a_lone_carriage_return_inside_a_line_is_kept() -> None:
    events, _out, _ = run_server([b"5\na\rb\n"])
    assert messages(events) == [b"a\rb"]


def test_several_messages_in_one_chunk_give_one_write() -> None:
    conv = ServerConversation(ProtocolConfig(framing=Framing.LINE))
    conv.data_to_send()
    events = conv.receive_data(b"1\n" + b"".join(b"m%d\n" % i for i in range(100)))
    assert len(messages(events)) == 100
    out = conv.data_to_send()
    assert out.count(b"\n") == 100 and out.startswith(PREFIX + b"m0\n") and out.endswith(PREFIX + b"m99\n")
    assert conv.messages_received == 100


def test_incomplete_line_produces_nothing_until_its_newline() -> None:
    conv = ServerConversation(ProtocolConfig(framing=Framing.LINE))
    conv.data_to_send()
    assert conv.receive_data(b"10\nhal") == [TimeoutNegotiated(10.0, 10.0)]
    assert conv.data_to_send() == b""
    assert conv.pending_bytes == 3
    assert conv.receive_data(b"f\n") == [MessageReceived(b"half")]
    assert conv.pending_bytes == 0


@pytest.mark.parametrize(
    ("request_line", "applied"),
    [(b"30", 30.0), (b"0.5", 0.5), (b".5", 0.5), (b" 7 ", 7.0), (b"0.01", 0.1), (b"99999", 3600.0)],
)
def test_timeout_is_clamped_to_bounds(request_line: bytes, applied: float) -> None:
    events, out, conv = run_server([request_line + b"\n"])
    negotiated = [e for e in events if isinstance(e, TimeoutNegotiated)]
    assert negotiated and negotiated[0].seconds == applied
    assert conv.idle_timeout == applied
    assert out == b""


@pytest.mark.parametrize(
    "bad",
    [
        b"abc",
        b"0",
        b"-5",
        b"nan",
        b"inf",
        b"1e3",
        b"",
        b"3 0",
        b"0.0",
        "٣٠".encode(),  # Arabic-Indic digits: float() would take them, the protocol does not
        "３０".encode(),  # fullwidth digits
        "\u00a030".encode(),  # a no-break space before ASCII digits
    ],
)
def test_invalid_timeout_gets_an_error_and_the_default(bad: bytes) -> None:
    events, out, conv = run_server([bad + b"\nnext\n"])
    rejected = [e for e in events if isinstance(e, TimeoutRejected)]
    assert rejected and rejected[0].seconds == 60.0
    assert conv.idle_timeout == 60.0
    first, second = out.split(b"\n")[:2]
    assert first.startswith(b"error: ") and b"using the default of 60s" in first
    assert second == PREFIX + b"next"  # the conversation goes on


def test_the_default_applies_until_negotiated() -> None:
    conv = ServerConversation(ProtocolConfig(default_timeout=42, framing=Framing.LINE))
    assert conv.idle_timeout == 42
    conv.receive_data(b"4")
    assert conv.idle_timeout == 42
    conv.receive_data(b"\n")
    assert conv.idle_timeout == 4


@pytest.mark.parametrize("text", ["٣٠", "３０", "৩", "1.٥", "\u00a030", "30\u2003"])
def test_parse_timeout_takes_ascii_digits_only(text: str) -> None:
    assert float(text.strip()) > 0  # what a parser built on \d or float() alone would accept
    with pytest.raises(InvalidTimeout, match="not a positive decimal"):
        parse_timeout(text, 0.1, 10)


def test_parse_timeout_reports_why() -> None:
    assert parse_timeout("2.5", 0.1, 10) == (2.5, 2.5)
    assert parse_timeout("20", 0.1, 10) == (10, 20)
    with pytest.raises(InvalidTimeout, match="not a positive decimal"):
        parse_timeout("ten", 0.1, 10)
    with pytest.raises(InvalidTimeout, match="greater than 0"):
        parse_timeout("0", 0.1, 10)


@pytest.mark.parametrize("split", SPLITS)
def test_line_too_long_closes_with_a_bye(split: Callable[[bytes], list[bytes]]) -> None:
    config = ProtocolConfig(max_line=10, framing=Framing.LINE)
    events, out, conv = run_server(split(b"5\n" + b"x" * 11 + b"\nafter\n"), config)
    assert out == b"bye: line too long (limit 10 bytes)\n"
    assert events[-1] == ConnectionClosed(CloseReason.LINE_TOO_LONG, "line too long (limit 10 bytes)")
    assert conv.closed and conv.pending_bytes == 0


def test_line_of_exactly_the_limit_is_accepted_with_or_without_cr() -> None:
    config = ProtocolConfig(max_line=10, framing=Framing.LINE)
    events, _out, _ = run_server(chunks_bytewise(b"5\n" + b"y" * 10 + b"\r\n" + b"z" * 10 + b"\n"), config)
    assert messages(events) == [b"y" * 10, b"z" * 10]


def test_nothing_is_buffered_beyond_the_limit() -> None:
    config = ProtocolConfig(max_line=100, framing=Framing.LINE)
    conv = ServerConversation(config)
    conv.receive_data(b"5\n")
    high_water = 0
    for _ in range(200):
        if conv.closed:
            break
        conv.receive_data(b"abc")
        high_water = max(high_water, conv.pending_bytes)
    assert conv.closed and conv.close_reason is CloseReason.LINE_TOO_LONG
    assert high_water <= 101


def test_a_huge_chunk_without_newline_is_refused_without_being_buffered() -> None:
    conv = ServerConversation(ProtocolConfig(max_line=100, framing=Framing.LINE))
    conv.receive_data(b"5\n")
    events = conv.receive_data(b"a" * 10_000)
    assert conv.pending_bytes == 0 and events[-1] == ConnectionClosed(
        CloseReason.LINE_TOO_LONG, "line too long (limit 100 bytes)"
    )


@pytest.mark.parametrize("split", SPLITS)
def test_invalid_utf8_gets_an_error_and_the_conversation_goes_on(split: Callable[[bytes], list[bytes]]) -> None:
    events, out, conv = run_server(split(b"5\n\xff\xfeoops\nok\n"))
    assert MessageRejected("message is not valid UTF-8") in events
    assert out == b"error: message is not valid UTF-8\n" + PREFIX + b"ok\n"
    assert not conv.closed


def test_valid_multibyte_utf8_split_across_chunks_is_one_message() -> None:
    message = "héllo 世界".encode()
    events, out, _ = run_server(chunks_bytewise(b"5\n" + message + b"\n"))
    assert messages(events) == [message]
    assert out == PREFIX + message + b"\n"


def test_invalid_utf8_as_the_timeout_line() -> None:
    events, out, conv = run_server([b"\xff\nhi\n"])
    assert any(isinstance(e, TimeoutRejected) for e in events)
    assert out.startswith(b"error: message is not valid UTF-8\n")
    assert conv.idle_timeout == 60.0


def test_quit_before_negotiating_is_answered_and_closes() -> None:
    _events, out, conv = run_server([b":q\n"])
    assert out == PREFIX + b":q\n" and conv.close_reason is CloseReason.QUIT


def test_input_after_quit_is_ignored() -> None:
    events, out, _conv = run_server([b"5\n:q\nmore\n"])
    assert messages(events) == [b":q"] and out == PREFIX + b":q\n"


def test_end_of_input_closes_without_a_bye() -> None:
    events, out, _conv = run_server([b"5\nhal"], eof=True)
    assert events[-1] == ConnectionClosed(CloseReason.PEER_CLOSED, None)
    assert out == b""


def test_server_initiated_close_queues_a_bye() -> None:
    conv = ServerConversation(ProtocolConfig(framing=Framing.LINE))
    conv.receive_data(b"0.5\n")
    conv.data_to_send()
    assert conv.close(CloseReason.IDLE_TIMEOUT) == [ConnectionClosed(CloseReason.IDLE_TIMEOUT, "idle timeout (0.5s)")]
    assert conv.data_to_send() == b"bye: idle timeout (0.5s)\n"
    assert conv.close(CloseReason.SHUTDOWN) == []  # only once
    with pytest.raises(LocalProtocolError):
        conv.receive_data(b"x\n")


def test_shutdown_bye_and_server_full_text() -> None:
    conv = ServerConversation(ProtocolConfig())
    conv.data_to_send()
    conv.close(CloseReason.SHUTDOWN)
    assert conv.data_to_send() == b"bye: server shutting down\n"
    assert ServerConversation.reject(CloseReason.SERVER_FULL) == b"bye: server full\n"


# ----------------------------------------------------------------------------------- framing detection (auto)


def test_auto_detects_lines_when_a_newline_comes() -> None:
    conv = ServerConversation(ProtocolConfig())
    assert conv.framing is Framing.AUTO
    assert conv.receive_data(b"3") == []
    assert conv.awaiting_framing_decision
    events = conv.receive_data(b"0\nhi\n")
    assert events[0] == FramingChosen(Framing.LINE)
    assert TimeoutNegotiated(30.0, 30.0) in events and messages(events) == [b"hi"]
    assert not conv.awaiting_framing_decision


def test_auto_settles_raw_when_the_window_passes_without_newline() -> None:
    conv = ServerConversation(ProtocolConfig())
    conv.data_to_send()
    conv.receive_data(b"30hi")
    events = conv.settle_framing()
    assert events[0] == FramingChosen(Framing.RAW)
    assert TimeoutNegotiated(30.0, 30.0) in events
    assert messages(events) == [b"hi"]
    assert conv.data_to_send() == PREFIX + b"hi"  # no newline added in raw mode
    # every later chunk is one message, newline or not
    assert messages(conv.receive_data(b"a\nb")) == [b"a\nb"]
    assert conv.data_to_send() == PREFIX + b"a\nb"


def test_raw_timeout_alone_and_quit() -> None:
    conv = ServerConversation(ProtocolConfig(framing=Framing.RAW))
    assert conv.data_to_send() == "你好,我是geventchat~".encode()  # no newline in forced raw mode
    assert conv.receive_data(b"2.5") == [TimeoutNegotiated(2.5, 2.5)]
    assert conv.data_to_send() == b""
    events = conv.receive_data(b":q")
    assert QuitReceived() in events and conv.close_reason is CloseReason.QUIT
    assert conv.data_to_send() == PREFIX + b":q"


def test_raw_sends_no_notices() -> None:
    conv = ServerConversation(ProtocolConfig(framing=Framing.RAW))
    conv.data_to_send()
    events = conv.receive_data(b"abc")  # no leading number: default timeout, whole chunk is a message
    assert any(isinstance(e, TimeoutRejected) for e in events) and messages(events) == [b"abc"]
    assert conv.data_to_send() == PREFIX + b"abc"
    conv.close(CloseReason.IDLE_TIMEOUT)
    assert conv.data_to_send() == b""


@pytest.mark.parametrize("split", SPLITS)
def test_auto_end_of_input_in_the_window_settles_raw_and_answers(split: Callable[[bytes], list[bytes]]) -> None:
    """``printf 30hi | socat``: the chunk and the client's half-close arrive within the detection window. End of
    input is a decision: the chunk is an unframed client's, answered as such before the close."""
    events, out, conv = run_server(split(b"30hi"), ProtocolConfig(), eof=True)
    assert FramingChosen(Framing.RAW) in events
    assert TimeoutNegotiated(30.0, 30.0) in events
    assert messages(events) == [b"hi"]
    assert out == PREFIX + b"hi"
    assert events[-1] == ConnectionClosed(CloseReason.PEER_CLOSED)
    assert conv.framing is Framing.RAW and conv.closed


def test_auto_end_of_input_after_a_bare_timeout_answers_nothing() -> None:
    events, out, conv = run_server([b"30"], ProtocolConfig(), eof=True)
    assert events == [
        FramingChosen(Framing.RAW),
        TimeoutNegotiated(30.0, 30.0),
        ConnectionClosed(CloseReason.PEER_CLOSED),
    ]
    assert out == b"" and conv.close_reason is CloseReason.PEER_CLOSED


def test_auto_end_of_input_after_an_unframed_quit_is_a_quit() -> None:
    events, out, _ = run_server([b":q"], ProtocolConfig(), eof=True)
    assert messages(events) == [b":q"] and QuitReceived() in events
    assert out == PREFIX + b":q"
    assert events[-1] == ConnectionClosed(CloseReason.QUIT)
    assert sum(isinstance(e, ConnectionClosed) for e in events) == 1


def test_forced_line_framing_drops_an_unfinished_line_at_end_of_input() -> None:
    """No framing to decide: a line without its newline is not a message (only auto framing answers it)."""
    events, out, _ = run_server([b"30\nhi"], ProtocolConfig(framing=Framing.LINE), eof=True)
    assert TimeoutNegotiated(30.0, 30.0) in events
    assert messages(events) == [] and out == b""
    assert events[-1] == ConnectionClosed(CloseReason.PEER_CLOSED)


def test_notices_are_counted_apart_from_messages() -> None:
    conv = ServerConversation(ProtocolConfig(framing=Framing.LINE, max_line=10))
    conv.data_to_send()
    conv.receive_data(b"soon\nok\n\xff\n" + b"z" * 11 + b"\n")
    out = conv.data_to_send()
    assert out.startswith(b"error: timeout") and out.endswith(b"bye: line too long (limit 10 bytes)\n")
    assert conv.messages_received == 1  # 'ok'
    assert conv.notices_queued == 3  # the invalid timeout, the invalid UTF-8 line, the bye


def test_settle_framing_is_a_no_op_once_decided() -> None:
    conv = ServerConversation(ProtocolConfig())
    conv.receive_data(b"5\n")
    assert conv.settle_framing() == []
    assert conv.framing is Framing.LINE


def test_auto_with_a_first_chunk_over_the_limit_goes_raw_at_once() -> None:
    conv = ServerConversation(ProtocolConfig(max_line=8))
    events = conv.receive_data(b"5" + b"z" * 20)
    assert events[0] == FramingChosen(Framing.RAW) and messages(events) == [b"z" * 20]


# --------------------------------------------------------------------------------------------------- client


def run_client(chunks: Iterable[bytes], prefix: str = "我收到了你的信息:") -> list[object]:
    conv = ClientConversation(prefix)
    events: list[object] = []
    for chunk in chunks:
        events += conv.receive_data(chunk)
    return events


@pytest.mark.parametrize("split", SPLITS)
def test_client_classifies_server_lines(split: Callable[[bytes], list[bytes]]) -> None:
    stream = GREETING + PREFIX + b"hi\n" + b"error: nope\r\n" + PREFIX + b"bye: not a bye\n" + b"bye: idle timeout\n"
    events = run_client(split(stream))
    assert events == [
        Greeting("你好,我是geventchat~"),
        Reply("我收到了你的信息:hi", "hi"),
        ErrorNotice("nope"),
        Reply("我收到了你的信息:bye: not a bye", "bye: not a bye"),
        Bye("idle timeout"),
    ]


def test_client_sees_server_full_instead_of_greeting() -> None:
    assert run_client([b"bye: server full\n"]) == [Bye("server full")]


def test_client_end_of_input_flushes_a_partial_line() -> None:
    conv = ClientConversation()
    conv.receive_data(GREETING + b"bye: cut")
    events = conv.receive_data(b"")
    assert events == [Bye("cut"), ConnectionClosed(CloseReason.PEER_CLOSED)]
    assert conv.closed


def test_client_refuses_oversize_and_invalid_utf8_from_the_server() -> None:
    conv = ClientConversation("p:", max_line=5)
    with pytest.raises(RemoteProtocolError, match="longer than"):
        conv.receive_data(b"x" * 100)
    with pytest.raises(RemoteProtocolError, match="invalid UTF-8"):
        ClientConversation().receive_data(b"\xff\n")


def test_client_encodes_requests() -> None:
    conv = ClientConversation()
    assert conv.send_timeout(30) == b"30\n"
    assert conv.send_timeout(0.5) == b"0.5\n"
    assert conv.send_message("hé") == "hé\n".encode()
    assert conv.send_quit() == b":q\n"
    with pytest.raises(LocalProtocolError):
        conv.send_message("two\nlines")
    with pytest.raises(LocalProtocolError):
        conv.send_timeout(float("nan"))
    raw = ClientConversation(framing=Framing.RAW)
    assert raw.send_timeout(30) == b"30" and raw.send_message("a\nb") == b"a\nb" and raw.send_quit() == b":q"
    assert raw.receive_data(b"hello") == [Greeting("hello")]
    assert raw.receive_data(PREFIX + b"x") == [Reply("我收到了你的信息:x", "x")]


def test_client_and_server_agree_end_to_end() -> None:
    server = ServerConversation(ProtocolConfig())
    client = ClientConversation()
    events = client.receive_data(server.data_to_send())
    assert events == [Greeting("你好,我是geventchat~")]
    server.receive_data(client.send_timeout(1.5) + client.send_message("ping") + client.send_quit())
    replies = client.receive_data(server.data_to_send())
    assert [r.message for r in replies if isinstance(r, Reply)] == ["ping", ":q"]


def test_quote_peer_text_escapes_control_characters() -> None:
    assert quote_peer_text("ok 世界") == "'ok 世界'"
    assert quote_peer_text("a\x1b[31mb\n") == "'a\\x1b[31mb\\n'"
    assert quote_peer_text(b"\xff") == "'\\xff'"
    assert quote_peer_text("x" * 100, limit=5) == "'xxxxx'..."


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="min_timeout"):
        ProtocolConfig(min_timeout=5, max_timeout=1)
    with pytest.raises(ValueError, match="positive finite"):
        ProtocolConfig(default_timeout=float("inf"))
    with pytest.raises(ValueError, match="single line"):
        ProtocolConfig(prefix="a\nb")
    with pytest.raises(LocalProtocolError):
        ClientConversation(framing=Framing.AUTO)


def test_client_refuses_an_oversize_line_arriving_whole_in_one_chunk() -> None:
    """Found by hypothesis: the one-line fast path skipped the length check the general path makes."""
    whole = ClientConversation("P:", max_line=12)
    with pytest.raises(RemoteProtocolError, match="longer than"):
        whole.receive_data(b"aa:q:q:q:q\xe4\xbd\xa0\xe4\xbd\xa0\n")
    split = ClientConversation("P:", max_line=12)
    split.receive_data(b"a")
    with pytest.raises(RemoteProtocolError, match="longer than"):
        split.receive_data(b"a:q:q:q:q\xe4\xbd\xa0\xe4\xbd\xa0\n")


def has_buffer(conversation: ServerConversation) -> bool:
    return conversation._buffer is not None


def test_a_buffer_is_made_only_while_part_of_a_line_waits() -> None:
    """Whole-line chunks (the usual ones) need no receive buffer: an idle client keeps none."""
    conv = ServerConversation(ProtocolConfig(max_line=100, framing=Framing.LINE, prefix=""))
    conv.receive_data(b"5\n")
    conv.receive_data(b"one\ntwo\n")
    assert not has_buffer(conv) and conv.messages_received == 2  # the situation: lines answered, nothing held
    conv.receive_data(b"thr")
    assert has_buffer(conv) and conv.pending_bytes == 3  # part of a line waits: now there is one
    conv.receive_data(b"ee\n")
    assert not has_buffer(conv) and conv.messages_received == 3
    assert conv.data_to_send().endswith(b"three\n")
