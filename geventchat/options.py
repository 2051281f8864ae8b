"""The command line's vocabulary: the ``geventchat`` parser with its subcommands (``serve``, the default, ``client``,
``check`` and ``loadtest``), their value parsers, and the one place parsed server options become a
:class:`~geventchat.config.ServerConfig`.

Nothing here reads ``sys.argv``, installs handlers or starts anything: :mod:`geventchat.cli` does that.
"""

from __future__ import annotations

import argparse
import importlib.metadata

from . import __version__
from ._argtypes import HelpFormatter, integer, non_negative, positive
from .config import (
    DEFAULT_GREETING,
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    ChatConfig,
    Framing,
    ProtocolConfig,
    ServerConfig,
)
from .envconfig import ENVIRONMENT_HELP
from .models import MODELS

__all__ = [
    "COMMANDS",
    "check_parser",
    "client_parser",
    "command_parser",
    "gevent_only_options",
    "package_version",
    "server_config",
    "server_parser",
    "subparsers",
    "version_line",
]

#: The subcommands, in the order ``geventchat --help`` lists them; ``serve`` is assumed when none is given.
COMMANDS = ("serve", "client", "check", "loadtest")


def package_version() -> str:
    """``X.Y.Z``, from the installed distribution's metadata (the source tree's when not installed)."""
    try:
        return importlib.metadata.version("geventchat")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def version_line() -> str:
    """``geventchat X.Y.Z`` (:func:`package_version`)."""
    return f"geventchat {package_version()}"


def command_parser() -> argparse.ArgumentParser:
    """The ``geventchat`` parser: ``--version`` and one subparser per command in :data:`COMMANDS`.

    ``loadtest``'s subparser only names the command for ``--help``: its arguments belong to Locust and are handed
    over unparsed (:mod:`geventchat.cli`).
    """
    parser = argparse.ArgumentParser(
        prog="geventchat",
        description="A greenlet-per-client TCP chat/echo server on gevent, its client, a health check and a load "
        "tester. With no command, 'serve' is assumed: 'geventchat --port 0' is 'geventchat serve --port 0'.",
        epilog="'geventchat COMMAND --help' shows a command's options.",
    )
    _add_version(parser)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the server (the default command)",
        description="Run the geventchat server (one greenlet per client).",
        epilog=ENVIRONMENT_HELP,
        formatter_class=HelpFormatter,
    )
    _add_server_options(serve)
    client = commands.add_parser(
        "client",
        help="talk to a server, interactively or from a pipe",
        description="Talk to a geventchat server. Interactive on a terminal (':q' or Ctrl-D quits); with piped "
        "input, sends each line, prints each reply, and sends ':q' at the end.",
        formatter_class=HelpFormatter,
    )
    _add_client_options(client)
    check = commands.add_parser(
        "check",
        help="health check: exit 0 if a server greets, 1 if not",
        description="Exit 0 if a geventchat server at HOST:PORT greets within the timeout, else print why and exit "
        "1 (for container and load-balancer health checks; also 'python -m geventchat.healthcheck [HOST [PORT]]').",
        formatter_class=HelpFormatter,
    )
    _add_check_options(check)
    commands.add_parser(
        "loadtest",
        help="run Locust with the packaged scenarios (needs pip install 'geventchat[loadtest]'); "
        "'geventchat loadtest --help' lists its options",
        add_help=False,
    )
    return parser


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of :func:`command_parser`'s ``parser``, by command name."""
    for action in parser._actions:  # argparse keeps its subparsers only in this private list
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("the parser has no subcommands")


def server_parser() -> argparse.ArgumentParser:
    """The parser for ``geventchat serve`` (the word ``serve`` already removed)."""
    return subparsers(command_parser())["serve"]


def client_parser() -> argparse.ArgumentParser:
    """The parser for ``geventchat client`` (the word ``client`` already removed)."""
    return subparsers(command_parser())["client"]


def check_parser() -> argparse.ArgumentParser:
    """The parser for ``geventchat check`` (the word ``check`` already removed)."""
    return subparsers(command_parser())["check"]


def _add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=version_line(), help="print the version and exit")


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    defaults = ServerConfig()
    _add_version(parser)
    _add_network_options(parser, defaults)
    _add_protocol_options(parser, ProtocolConfig())
    _add_operations_options(parser, defaults)
    _add_hardening_options(parser, defaults)
    _add_chat_options(parser, ChatConfig())


def _add_network_options(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=defaults.host, help="address to bind (loopback unless you say otherwise)")
    net.add_argument("--port", type=integer(0, 65535), default=DEFAULT_PORT, help="TCP port; 0 picks a free one")
    net.add_argument("--backlog", type=integer(1), default=defaults.backlog, help="listen backlog")
    net.add_argument(
        "--max-connections",
        type=integer(1),
        default=None,
        help="clients served at once; the next gets 'bye: server full' "
        f"(default: the open-file limit less headroom, here {defaults.connection_limit})",
    )
    net.add_argument(
        "--workers",
        type=integer(0),
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT) under a supervising parent; 0 = one per CPU. "
        "--max-connections applies to each worker. SIGHUP replaces the workers gracefully, SIGTTIN adds one, "
        "SIGTTOU removes one",
    )
    net.add_argument(
        "--worker-timeout",
        type=non_negative,
        default=30.0,
        help="with --workers: seconds a worker may miss its heartbeat before the supervisor kills and replaces it "
        "(0 = never)",
    )
    net.add_argument(
        "--model",
        choices=MODELS,
        default=MODELS[0],
        help="concurrency model: gevent (greenlet per client); thread, process and iterative are comparison "
        "backends for benchmarks, not production modes",
    )
    net.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1/v2 header from a load balancer (HAProxy send-proxy) on every connection "
        "and log the real client address; connections without one are closed",
    )


def _add_protocol_options(parser: argparse.ArgumentParser, protocol: ProtocolConfig) -> None:
    conv = parser.add_argument_group("protocol")
    conv.add_argument("--greeting", default=DEFAULT_GREETING, help="line sent to each client on accept")
    conv.add_argument("--prefix", default=DEFAULT_PREFIX, help="text put before each echoed message")
    conv.add_argument(
        "--default-timeout",
        type=positive,
        default=protocol.default_timeout,
        help="idle timeout (s) until the client negotiates one, or if its request is invalid",
    )
    conv.add_argument("--min-timeout", type=positive, default=protocol.min_timeout, help="smallest idle timeout (s)")
    conv.add_argument("--max-timeout", type=positive, default=protocol.max_timeout, help="largest idle timeout (s)")
    conv.add_argument(
        "--max-line",
        type=integer(1),
        default=protocol.max_line,
        help="longest line in bytes; longer lines close the connection",
    )
    conv.add_argument(
        "--framing",
        choices=[f.value for f in Framing],
        default=protocol.framing.value,
        help="line: '\\n'-terminated lines; raw: each received chunk is a message (the original "
        "tutorial); auto: detect per connection",
    )


def _add_chat_options(parser: argparse.ArgumentParser, chat: ChatConfig) -> None:
    group = parser.add_argument_group("chat")
    group.add_argument(
        "--chat",
        choices=["on", "off"],
        default="on" if chat.enabled else "off",
        help="serve the chat commands (:nick, :join, ...) to line-framed clients; off makes them plain messages",
    )
    group.add_argument(
        "--room-rate",
        type=non_negative,
        default=chat.room_rate,
        help="messages per second one client may send into rooms and privately (burst twice as many; 0 = unlimited)",
    )
    group.add_argument(
        "--send-queue",
        type=integer(1),
        default=chat.send_queue,
        help="bytes of room and private lines one member may have waiting; past it 'bye: too slow'",
    )
    group.add_argument(
        "--redis",
        default=chat.redis,
        metavar="URL",
        help="redis://HOST:PORT/DB: share rooms, nicks and private messages with every worker and host using this "
        "Redis (default: rooms in this process's memory)",
    )
    group.add_argument(
        "--presence-ttl",
        type=positive,
        default=chat.presence_ttl,
        help="with --redis: seconds after which a dead server's members are announced as left (server lost)",
    )
    group.add_argument("--max-rooms", type=integer(1), default=chat.max_rooms, help="rooms that may exist at once")


def _add_operations_options(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--grace",
        type=non_negative,
        default=defaults.grace,
        help="seconds clients get to leave after 'bye: server shutting down'",
    )
    ops.add_argument(
        "--linger",
        type=non_negative,
        default=defaults.linger,
        help="seconds a closing connection drains input so the client can read the last line",
    )
    ops.add_argument(
        "--stats-interval",
        type=non_negative,
        default=defaults.stats_interval,
        help="seconds between statistics lines at INFO (0 = off)",
    )
    ops.add_argument(
        "--gc-tuning",
        choices=["on", "off"],
        default="on",
        help="after start-up, gc.freeze() and make full collections rare (docs/performance.md); "
        "off keeps CPython's defaults",
    )
    ops.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging level",
    )
    ops.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text: one human line per record; json: one JSON object per line with time, level, logger, event, "
        "pid, and peer and reason where the record has them (the listening line stays plain text on stdout)",
    )
    ops.add_argument(
        "--log-file",
        default=None,
        help="append log records to this file instead of stderr (default: stderr)",
    )
    ops.add_argument(
        "--pid-file",
        default=None,
        help="write the server's (or the supervisor's) process id here at start, remove it at exit (default: none)",
    )


def _add_hardening_options(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    """Per-address cap, handshake timeout, TLS and metrics (README: "Limits and hardening")."""
    group = parser.add_argument_group("hardening")
    group.add_argument(
        "--max-per-ip",
        type=integer(1),
        default=None,
        help="connections one client address may hold at once; the next gets "
        "'bye: too many connections from your address' (default: no per-address cap)",
    )
    group.add_argument(
        "--handshake-timeout",
        type=positive,
        default=defaults.handshake_timeout,
        help="seconds a client has to send its idle-timeout line (and finish TLS) before 'bye: handshake timeout'",
    )
    group.add_argument(
        "--tls-cert", default=None, help="PEM certificate chain to serve TLS with (default: none, plain TCP)"
    )
    group.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert (default: inside the cert file)")
    group.add_argument(
        "--metrics-port",
        type=integer(0, 65535),
        default=None,
        help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (default: off; 0 picks a free port)",
    )
    group.add_argument("--metrics-host", default=defaults.metrics_host, help="address the metrics endpoint binds")


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    _add_version(parser)
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=integer(1, 65535), default=DEFAULT_PORT, help="server port")
    parser.add_argument("--timeout", type=positive, default=60.0, help="idle timeout (s) to negotiate")
    parser.add_argument(
        "--framing",
        choices=[Framing.LINE.value, Framing.RAW.value],
        default=Framing.LINE.value,
        help="raw talks to an unframed server such as the original tutorial's",
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the server's reply prefix")
    parser.add_argument("--connect-timeout", type=positive, default=5.0, help="seconds to connect and be greeted")
    parser.add_argument("--reply-timeout", type=positive, default=10.0, help="seconds to wait for each reply")
    parser.add_argument("--tls", action="store_true", help="talk TLS, verifying the server against the system CAs")
    parser.add_argument(
        "--tls-ca",
        default=None,
        help="PEM CA file to verify the server with (implies --tls) (default: the system CAs, with --tls)",
    )


def _add_check_options(parser: argparse.ArgumentParser) -> None:
    _add_version(parser)
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=integer(1, 65535), default=DEFAULT_PORT, help="server port")
    parser.add_argument("--timeout", type=positive, default=2.0, help="seconds to connect and be greeted")


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The frozen configuration the parsed server options describe. Raises :class:`ValueError` for a combination
    the configuration refuses (such as ``--min-timeout`` above ``--max-timeout``)."""
    protocol = ProtocolConfig(
        greeting=args.greeting,
        prefix=args.prefix,
        default_timeout=args.default_timeout,
        min_timeout=args.min_timeout,
        max_timeout=args.max_timeout,
        max_line=args.max_line,
        framing=Framing(args.framing),
    )
    return ServerConfig(
        host=args.host,
        port=args.port,
        protocol=protocol,
        max_connections=args.max_connections,
        grace=args.grace,
        linger=args.linger,
        stats_interval=args.stats_interval,
        backlog=args.backlog,
        max_per_ip=args.max_per_ip,
        handshake_timeout=args.handshake_timeout,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        proxy_protocol=args.proxy_protocol,
        chat=ChatConfig(
            enabled=args.chat == "on",
            room_rate=args.room_rate,
            send_queue=args.send_queue,
            max_rooms=args.max_rooms,
            redis=args.redis,
            presence_ttl=args.presence_ttl,
        ),
    )


def gevent_only_options(config: ServerConfig) -> list[str]:
    """The hardening options given that only the gevent server implements."""
    given = {"--max-per-ip": config.max_per_ip, "--tls-cert": config.tls_cert, "--metrics-port": config.metrics_port}
    flags = [flag for flag, value in given.items() if value is not None]
    return [*flags, "--proxy-protocol"] if config.proxy_protocol else flags
