"""The command line's vocabulary: argparse parsers for ``geventchat [serve]`` and ``geventchat client``, their value
parsers, and the one place parsed server options become a :class:`~geventchat.config.ServerConfig`.

Nothing here reads ``sys.argv``, installs handlers or starts anything: :mod:`geventchat.cli` does that.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from . import __version__
from .config import DEFAULT_GREETING, DEFAULT_PORT, DEFAULT_PREFIX, Framing, ProtocolConfig, ServerConfig
from .models import MODELS

__all__ = ["client_parser", "gevent_only_options", "server_config", "server_parser"]


def _number(minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {bound}")
        return value

    return parse


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}{upper}")
        return value

    return parse


_positive = _number(0, inclusive=False)
_non_negative = _number(0, inclusive=True)


class _HelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default, once.

    argparse's ArgumentDefaultsHelpFormatter appends ``(default: %(default)s)`` even when the help already states
    the default in words, and shows ``None`` for options that are off unless given. Here a help that states its
    own ``(default: ...)`` is left alone, a flag says ``(default: off)``, and an option whose default is None must
    say in its help what that means (tests/test_cli.py checks every option).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # store_true: the flag is off unless given
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


def server_parser() -> argparse.ArgumentParser:
    """The parser for ``geventchat [serve]`` (the word ``serve`` already removed)."""
    defaults = ServerConfig()
    parser = argparse.ArgumentParser(
        prog="geventchat [serve]",
        description="Run the geventchat server (one greenlet per client). "
        "'geventchat client --help' shows the client's options.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"geventchat {__version__}")
    _add_network_options(parser, defaults)
    _add_protocol_options(parser, ProtocolConfig())
    _add_operations_options(parser, defaults)
    _add_hardening_options(parser, defaults)
    return parser


def _add_network_options(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=defaults.host, help="address to bind (loopback unless you say otherwise)")
    net.add_argument("--port", type=_integer(0, 65535), default=DEFAULT_PORT, help="TCP port; 0 picks a free one")
    net.add_argument("--backlog", type=_integer(1), default=defaults.backlog, help="listen backlog")
    net.add_argument(
        "--max-connections",
        type=_integer(1),
        default=None,
        help="clients served at once; the next gets 'bye: server full' "
        f"(default: the open-file limit less headroom, here {defaults.connection_limit})",
    )
    net.add_argument(
        "--workers",
        type=_integer(0),
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT) under a supervising parent; 0 = one per CPU. "
        "--max-connections applies to each worker",
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
        type=_positive,
        default=protocol.default_timeout,
        help="idle timeout (s) until the client negotiates one, or if its request is invalid",
    )
    conv.add_argument("--min-timeout", type=_positive, default=protocol.min_timeout, help="smallest idle timeout (s)")
    conv.add_argument("--max-timeout", type=_positive, default=protocol.max_timeout, help="largest idle timeout (s)")
    conv.add_argument(
        "--max-line",
        type=_integer(1),
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


def _add_operations_options(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--grace",
        type=_non_negative,
        default=defaults.grace,
        help="seconds clients get to leave after 'bye: server shutting down'",
    )
    ops.add_argument(
        "--linger",
        type=_non_negative,
        default=defaults.linger,
        help="seconds a closing connection drains input so the client can read the last line",
    )
    ops.add_argument(
        "--stats-interval",
        type=_non_negative,
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
        help="logging level (stderr)",
    )


def _add_hardening_options(parser: argparse.ArgumentParser, defaults: ServerConfig) -> None:
    """Per-address cap, handshake timeout, TLS and metrics (README: "Limits and hardening")."""
    group = parser.add_argument_group("hardening")
    group.add_argument(
        "--max-per-ip",
        type=_integer(1),
        default=None,
        help="connections one client address may hold at once; the next gets "
        "'bye: too many connections from your address' (default: no per-address cap)",
    )
    group.add_argument(
        "--handshake-timeout",
        type=_positive,
        default=defaults.handshake_timeout,
        help="seconds a client has to send its idle-timeout line (and finish TLS) before 'bye: handshake timeout'",
    )
    group.add_argument(
        "--tls-cert", default=None, help="PEM certificate chain to serve TLS with (default: none, plain TCP)"
    )
    group.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert (default: inside the cert file)")
    group.add_argument(
        "--metrics-port",
        type=_integer(0, 65535),
        default=None,
        help="serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (default: off; 0 picks a free port)",
    )
    group.add_argument("--metrics-host", default=defaults.metrics_host, help="address the metrics endpoint binds")


def client_parser() -> argparse.ArgumentParser:
    """The parser for ``geventchat client`` (the word ``client`` already removed)."""
    parser = argparse.ArgumentParser(
        prog="geventchat client",
        description="Talk to a geventchat server. Interactive on a terminal (':q' or Ctrl-D quits); with piped "
        "input, sends each line, prints each reply, and sends ':q' at the end.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=_integer(1, 65535), default=DEFAULT_PORT, help="server port")
    parser.add_argument("--timeout", type=_positive, default=60.0, help="idle timeout (s) to negotiate")
    parser.add_argument(
        "--framing",
        choices=[Framing.LINE.value, Framing.RAW.value],
        default=Framing.LINE.value,
        help="raw talks to an unframed server such as the original tutorial's",
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the server's reply prefix")
    parser.add_argument("--connect-timeout", type=_positive, default=5.0, help="seconds to connect and be greeted")
    parser.add_argument("--reply-timeout", type=_positive, default=10.0, help="seconds to wait for each reply")
    parser.add_argument("--tls", action="store_true", help="talk TLS, verifying the server against the system CAs")
    parser.add_argument(
        "--tls-ca",
        default=None,
        help="PEM CA file to verify the server with (implies --tls) (default: the system CAs, with --tls)",
    )
    return parser


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
    )


def gevent_only_options(config: ServerConfig) -> list[str]:
    """The hardening options given that only the gevent server implements."""
    given = {"--max-per-ip": config.max_per_ip, "--tls-cert": config.tls_cert, "--metrics-port": config.metrics_port}
    flags = [flag for flag, value in given.items() if value is not None]
    return [*flags, "--proxy-protocol"] if config.proxy_protocol else flags
