"""Entry point: argv and the environment → frozen config, logging, signals. The only module that reads argv or
the environment, or installs handlers.

``geventchat [serve] [options]`` runs the server, ``geventchat client`` the client, ``geventchat check`` the health
check, ``geventchat loadtest`` Locust with the packaged scenarios. The options and their parsing live in
:mod:`geventchat.options`, the environment's part in :mod:`geventchat.envconfig`, the client's session in
:mod:`geventchat.client_cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import gevent

from . import systemd
from .client_cli import run_client
from .config import ServerConfig
from .envconfig import apply_environment
from .healthcheck import check_server
from .logs import configure_logging
from .options import COMMANDS, command_parser, gevent_only_options, server_config, subparsers

if TYPE_CHECKING:
    from .server import ChatServer

__all__ = ["entry_point", "main", "run_client", "run_server"]

log = logging.getLogger("geventchat")

#: What ``geventchat loadtest`` says when the load tester does not import.
LOADTEST_MISSING = "geventchat: the load tester needs Locust: pip install 'geventchat[loadtest]'"
_TOP_LEVEL_FLAGS = ("-h", "--help", "--version")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``geventchat``; returns the process exit code (argparse exits 2 itself for bad options)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "loadtest":
        return run_loadtest(args[1:])  # Locust parses its own options, --help included
    if not args or (args[0] not in COMMANDS and args[0] not in _TOP_LEVEL_FLAGS):
        args = ["serve", *args]  # serve is the default command
    parser = command_parser()
    if args[0] == "serve":
        apply_environment(subparsers(parser)["serve"], os.environ)
    namespace = parser.parse_args(args)
    if namespace.command == "client":
        return run_client(namespace)
    if namespace.command == "check":
        return run_check(namespace)
    return run_server(namespace)


def run_check(args: argparse.Namespace) -> int:
    """``geventchat check``: 0 if the server greets, 1 (with the reason on stderr) if not."""
    problem = check_server(args.host, args.port, args.timeout)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


def run_loadtest(argv: list[str]) -> int:
    """``geventchat loadtest ARGS``: hand every argument to :func:`geventchat.loadtest.command.main`, imported only
    now, so the server and client never import Locust (nor need it installed)."""
    try:
        command = importlib.import_module(".loadtest.command", __package__)
    except ImportError as exc:
        print(f"{LOADTEST_MISSING} ({exc})", file=sys.stderr)
        return 2
    code: int = command.main(argv)
    return code


# --------------------------------------------------------------------------------------------------- server


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
    """Serve as ``args`` say until SIGTERM/SIGINT; returns the exit status (0 after a clean shutdown, 1 if the
    address cannot be bound or the server failed, 2 for options that cannot work)."""
    several_processes = args.workers != 1 or args.model == "process"
    try:  # with several processes, each text log line says which one wrote it
        configure_logging(args.log_level, args.log_format, args.log_file, with_pid=several_processes)
    except OSError as exc:
        print(f"geventchat: error: cannot open --log-file {args.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        config = server_config(args)
    except ValueError as exc:
        print(f"geventchat: error: {exc}", file=sys.stderr)
        return 2
    try:
        with _pid_file(args.pid_file):
            return _serve(args, config)
    except _PidFileError as exc:
        print(f"geventchat: error: {exc}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace, config: ServerConfig) -> int:
    if args.model != "gevent":
        return _serve_other_model(args, config)
    unusable = _missing_dependency(config) or _unusable_certificate(config)
    if unusable is not None:
        print(unusable, file=sys.stderr)
        return 2
    if args.workers != 1:
        from .workers import Supervisor, resolve_worker_count

        count = resolve_worker_count(args.workers)
        if count > 1:
            if config.chat.enabled and config.chat.redis is None:
                # Each worker would have rooms of its own, invisible to the others: rooms are off, said once here.
                log.warning("chat rooms are off: %d workers without --redis (room commands answer an error)", count)
                config = dataclasses.replace(config, chat=dataclasses.replace(config.chat, workers=count))
            _tune_gc(args)  # before the fork: the workers inherit the frozen start-up objects and the thresholds
            try:
                return Supervisor(config, count, _announce, worker_timeout=args.worker_timeout).run()
            except OSError as exc:
                return _cannot_listen(config, exc)
    return _serve_gevent(args, config)


class _PidFileError(Exception):
    """The pid file cannot be written (the operator's path or permissions)."""


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """Write this process's id to ``path`` for the body's duration, then remove it (if it is still ours).

    Written to a temporary name and renamed, so a reader never sees a half-written file. Forked workers leave
    through ``os._exit`` and never reach the removal.
    """
    if path is None:
        yield
        return
    pid = os.getpid()
    try:
        with open(f"{path}.tmp", "w", encoding="ascii") as file:
            file.write(f"{pid}\n")
        os.replace(f"{path}.tmp", path)
    except OSError as exc:
        raise _PidFileError(f"cannot write --pid-file {path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as file:
                ours = file.read().strip() == str(pid)
            if ours:
                os.unlink(path)


def _unusable_certificate(config: ServerConfig) -> str | None:
    """The one-line error for a TLS certificate or key that does not load, or None (also without TLS)."""
    if config.tls_cert is None:
        return None
    from .tls import server_context

    try:  # here, once, so a bad certificate is one clear error rather than crashing workers
        server_context(config.tls_cert, config.tls_key)
    except OSError as exc:  # ssl.SSLError is an OSError
        return f"geventchat: cannot load the TLS certificate or key: {exc.strerror or exc}"
    return None


def _serve_gevent(args: argparse.Namespace, config: ServerConfig) -> int:
    """One gevent server in this process."""
    from .server import ChatServer

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
            systemd.notify("STOPPING=1")
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
    systemd.notify("READY=1")  # after the line: whoever reads either may connect at once


def _cannot_listen(config: ServerConfig, exc: OSError) -> int:
    print(f"geventchat: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
    return 1


def _serve_other_model(args: argparse.Namespace, config: ServerConfig) -> int:
    """A comparison model (``--model thread|process|iterative``), after refusing the options it does not have."""
    if args.workers != 1:
        print(
            f"geventchat: error: --workers applies to the gevent model only, not to --model {args.model}",
            file=sys.stderr,
        )
        return 2
    gevent_only = gevent_only_options(config)
    if gevent_only:
        print(
            f"geventchat: error: {', '.join(gevent_only)} applies to the gevent model only, "
            f"not to --model {args.model}",
            file=sys.stderr,
        )
        return 2
    from .models import serve_model

    try:
        return serve_model(args.model, config, _announce)
    except OSError as exc:
        return _cannot_listen(config, exc)


def entry_point() -> None:
    """Console-script entry (``geventchat``)."""
    raise SystemExit(main())
