"""Entry point: argv → frozen config, logging, signals. The only module that reads argv or installs handlers.

``geventchat [serve] [options]`` runs the server; ``geventchat client [options]`` runs the client.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import gevent
import gevent.event

from . import __version__
from .client import ChatClient, ChatClientError, ClosedByServer
from .config import DEFAULT_GREETING, DEFAULT_PORT, DEFAULT_PREFIX, Framing, ProtocolConfig, ServerConfig
from .models import MODELS
from .protocol import QUIT, ErrorNotice, Reply, escape_controls

if TYPE_CHECKING:
    from .server import ChatServer

log = logging.getLogger("geventchat")

_COMMANDS = ("serve", "client")


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


def _server_parser() -> argparse.ArgumentParser:
    defaults = ServerConfig()
    protocol = ProtocolConfig()
    parser = argparse.ArgumentParser(
        prog="geventchat [serve]",
        description="Run the geventchat server (one greenlet per client). "
        "'geventchat client --help' shows the client's options.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"geventchat {__version__}")
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
    _add_hardening_options(parser, defaults)
    return parser


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


def _client_parser() -> argparse.ArgumentParser:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``geventchat``; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "client":
        return run_client(_client_parser().parse_args(args[1:]))
    if args and args[0] == "serve":
        args = args[1:]
    return run_server(_server_parser().parse_args(args))


# --------------------------------------------------------------------------------------------------- server


def _server_config(args: argparse.Namespace) -> ServerConfig:
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


def _gevent_only_options(config: ServerConfig) -> list[str]:
    """The hardening options given that only the gevent server implements."""
    given = {"--max-per-ip": config.max_per_ip, "--tls-cert": config.tls_cert, "--metrics-port": config.metrics_port}
    flags = [flag for flag, value in given.items() if value is not None]
    return [*flags, "--proxy-protocol"] if config.proxy_protocol else flags


def _missing_dependency(config: ServerConfig) -> str | None:
    """The one-line error for an option whose package does not import, or None when all do.

    prometheus-client is a core dependency, yet an install made with ``--no-deps`` or from a distribution's
    packages can lack it: say what to install before listening, rather than a traceback once the port is open.
    (Every other module a server option uses is ours or the standard library's.)
    """
    if config.metrics_port is None:
        return None
    try:
        importlib.import_module(".metrics", __package__)
    except ImportError as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return (
            f"geventchat: --metrics-port needs the 'prometheus-client' package ({why}): "
            "pip install 'prometheus-client>=0.20'"
        )
    return None


def run_server(args: argparse.Namespace) -> int:
    from .server import ChatServer

    several_processes = args.workers != 1 or args.model == "process"
    # With several processes, each log line says which one wrote it.
    name = "%(name)s[%(process)d]" if several_processes else "%(name)s"
    logging.basicConfig(level=args.log_level, format=f"%(asctime)s %(levelname)s {name}: %(message)s")
    try:
        config = _server_config(args)
    except ValueError as exc:
        print(f"geventchat: error: {exc}", file=sys.stderr)
        return 2
    if args.model != "gevent":
        if args.workers != 1:
            print(
                f"geventchat: error: --workers applies to the gevent model only, not to --model {args.model}",
                file=sys.stderr,
            )
            return 2
        gevent_only = _gevent_only_options(config)
        if gevent_only:
            print(
                f"geventchat: error: {', '.join(gevent_only)} applies to the gevent model only, "
                f"not to --model {args.model}",
                file=sys.stderr,
            )
            return 2
        return _serve_other_model(args.model, config)
    missing = _missing_dependency(config)
    if missing is not None:
        print(missing, file=sys.stderr)
        return 2
    if config.tls_cert is not None:
        from .tls import server_context

        try:  # here, once, so a bad certificate is one clear error rather than crashing workers
            server_context(config.tls_cert, config.tls_key)
        except OSError as exc:  # ssl.SSLError is an OSError
            print(f"geventchat: cannot load the TLS certificate or key: {exc.strerror or exc}", file=sys.stderr)
            return 2
    if args.workers != 1:
        from .workers import Supervisor, resolve_worker_count

        count = resolve_worker_count(args.workers)
        if count > 1:
            _tune_gc(args)  # before the fork: the workers inherit the frozen start-up objects and the thresholds
            try:
                return Supervisor(config, count, _announce).run()
            except OSError as exc:
                return _cannot_listen(config, exc)
    server = ChatServer(config)
    try:
        server.start()
    except OSError as exc:
        return _cannot_listen(config, exc)
    # Before the listening line: a supervisor (or test) may signal as soon as it reads it.
    _handle_stop_signals(server)
    _tune_gc(args)
    _announce(server.address)
    if server.metrics is not None:
        metrics_host, metrics_port = server.metrics.address
        print(f"geventchat metrics on http://{metrics_host}:{metrics_port}/metrics", flush=True)
    log.info("serving up to %d connections", server.connection_limit)
    server.serve_forever()
    log.info("stopped")
    return 0


def _handle_stop_signals(server: ChatServer) -> None:
    """SIGTERM or SIGINT: graceful shutdown (up to the grace period); a second one exits at once."""
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        if len(signals_seen) == 1:
            log.info(
                "%s: shutting down (grace %gs); send it again to exit at once",
                signal.Signals(signum).name,
                server.config.grace,
            )
            gevent.spawn(server.shutdown)
        else:
            log.warning("second signal: exiting now")
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal, signum)


def _tune_gc(args: argparse.Namespace) -> None:
    if args.gc_tuning == "on":
        from .gctuning import tune_collector

        log.debug("garbage collector thresholds %s, start-up objects frozen", tune_collector())


def _announce(address: tuple[str, int]) -> None:
    from ._listening import format_listening_line

    print(format_listening_line(address), flush=True)


def _cannot_listen(config: ServerConfig, exc: OSError) -> int:
    print(f"geventchat: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
    return 1


def _serve_other_model(model: str, config: ServerConfig) -> int:
    from .models import serve_model

    try:
        return serve_model(model, config, _announce)
    except OSError as exc:
        return _cannot_listen(config, exc)


# --------------------------------------------------------------------------------------------------- client


def run_client(args: argparse.Namespace) -> int:
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
                return _interactive(client)
            return _piped(client)
        except ChatClientError as exc:  # refused, reset, timed out, or a 'bye:' (ClosedByServer)
            print(f"geventchat client: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


def _piped(client: ChatClient) -> int:
    """Send each stdin line, print each reply line as the server sent it; ':q' at the end of input."""
    print(client.greeting, flush=True)
    for raw in sys.stdin:
        line = raw.rstrip("\r\n")
        if line == ":q":
            break
        client.send(line)
        event = client.receive()
        if isinstance(event, Reply):
            print(event.text, flush=True)
        elif isinstance(event, ErrorNotice):
            print(f"error: {escape_controls(event.reason)}", file=sys.stderr, flush=True)
    print(client.quit().text, flush=True)
    return 0


def _interactive(client: ChatClient) -> int:
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
                print(f"\r{escape_controls(text)}\n> ", end="", flush=True)
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


def entry_point() -> None:
    """Console-script entry (``geventchat``)."""
    raise SystemExit(main())
