"""The command line: help, argument errors, the listening line, signals."""

from __future__ import annotations

import importlib.metadata
import re
import signal
import subprocess
import sys
import types
from collections.abc import Callable

import pytest

from geventchat import cli
from geventchat.cli import LOADTEST_MISSING
from geventchat.client import ChatClient, ClosedByServer
from geventchat.config import DEFAULT_PORT, ServerConfig
from geventchat.testing import ServerProcess


def geventchat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geventchat", *args], capture_output=True, text=True, timeout=20, check=False
    )


def test_help_lists_the_commands_and_each_command_its_options() -> None:
    result = geventchat("--help")
    assert result.returncode == 0, result.stderr
    commands = re.findall(r"^    (\w+)\s", result.stdout, re.MULTILINE)
    assert commands == ["serve", "client", "check", "loadtest"]
    serve_help = geventchat("serve", "--help")
    assert serve_help.returncode == 0
    for option in ["--port", "--max-connections", "--framing", "--grace", "--min-timeout", "--log-format"]:
        assert option in serve_help.stdout
    assert "GEVENTCHAT_<OPTION>" in serve_help.stdout  # the environment, said once in the epilog
    client_help = geventchat("client", "--help")
    assert client_help.returncode == 0 and "--timeout" in client_help.stdout and "--framing" in client_help.stdout
    check_help = geventchat("check", "--help")
    assert check_help.returncode == 0 and "--port" in check_help.stdout


def test_serve_is_the_default_command(server_process: Callable[..., ServerProcess]) -> None:
    # conftest's ServerProcess runs 'python -m geventchat --port 0 ...' with no command word.
    server = server_process()
    with ChatClient.connect(server.host, server.port, idle_timeout=5) as client:
        assert client.request("default").message == "default"
    assert geventchat("--port", "abc").stderr == geventchat("serve", "--port", "abc").stderr


def test_version_everywhere_comes_from_the_package_metadata() -> None:
    expected = f"geventchat {importlib.metadata.version('geventchat')}"
    for command in [(), ("serve",), ("client",), ("check",)]:
        result = geventchat(*command, "--version")
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.strip() == expected, command


def test_bad_arguments_give_a_clear_message_and_exit_2() -> None:
    cases = {
        ("--port", "abc"): "'abc' is not a whole number",
        ("--port", "70000"): "must be >= 0 and <= 65535",
        ("--min-timeout", "-1"): "must be a finite number > 0",
        ("--framing", "xml"): "invalid choice",
        ("--min-timeout", "5", "--max-timeout", "1"): "min_timeout (5.0) is larger than max_timeout (1.0)",
        ("client", "--timeout", "nan"): "must be a finite number > 0",
    }
    for args, message in cases.items():
        result = geventchat(*args)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_cannot_bind_is_one_line_and_exit_1(server_process: Callable[..., ServerProcess]) -> None:
    taken = server_process()
    result = geventchat("--port", str(taken.port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{taken.port}" in result.stderr and "Traceback" not in result.stderr


def test_listening_line_reports_the_real_port(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process()
    assert server.port > 0
    with ChatClient.connect(server.host, server.port, idle_timeout=5) as client:
        assert client.request("up").message == "up"


def test_sigterm_says_bye_to_every_client_and_exits_0(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process("--grace", "3")
    clients = [ChatClient.connect(server.host, server.port, idle_timeout=30) for _ in range(10)]
    for client in clients:
        client.request("hello")
    server.send_signal(signal.SIGTERM)
    reasons = []
    for client in clients:
        try:
            client.receive(timeout=5)
        except ClosedByServer as closed:
            reasons.append(closed.reason)
        client.close()
    assert reasons == ["server shutting down"] * 10
    code, err = server.wait(timeout=10), server.stderr_text()
    assert code == 0, err
    assert "shutting down" in err


def test_second_signal_exits_at_once(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process("--grace", "30")
    client = ChatClient.connect(server.host, server.port, idle_timeout=30)
    client.request("hold the server open")
    server.send_signal(signal.SIGINT)
    with pytest.raises(ClosedByServer) as bye:  # we keep the socket open so the grace would run
        client.receive(timeout=5)
    assert bye.value.reason == "server shutting down"
    server.send_signal(signal.SIGINT)
    code, err = server.wait(timeout=5), server.stderr_text()  # far less than the 30 s grace
    assert code == 1 and "second signal" in err
    client.close()


def option_helps(help_output: str) -> dict[str, str]:
    """Each option's help in ``--help`` output, wrapped lines joined, by its long name (``--help`` for -h)."""
    helps: dict[str, str] = {}
    current: str | None = None
    for line in help_output.splitlines():
        entry = re.match(r"  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if entry is not None:
            current = re.findall(r"--[a-z-]+", entry.group(1))[0]
            helps[current] = entry.group(2) or ""
        elif current is not None and line.startswith("    ") and line.strip():
            helps[current] += " " + line.strip()
        else:
            current = None  # a blank line or a group heading ends the entry
    return helps


@pytest.mark.parametrize("command", [("serve",), ("client",)])
def test_help_shows_each_default_once_and_never_none(command: tuple[str, ...]) -> None:
    result = geventchat(*command, "--help")
    assert result.returncode == 0, result.stderr
    usage = result.stdout.split("\n\n")[0]
    in_usage = set(re.findall(r"\[(--[a-z-]+)", usage))
    helps = option_helps(result.stdout)
    assert len(in_usage) >= 8 and in_usage <= set(helps)  # the parse found every option the usage names
    for option in in_usage - {"--help", "--version"}:
        text = helps[option]
        assert text.count("(default:") == 1, (option, text)
        assert "None" not in text, (option, text)
    if command == ("client",):
        assert helps["--timeout"].endswith("(default: 60.0)") and helps["--tls"].endswith("(default: off)")
    else:
        assert helps["--port"].endswith(f"(default: {DEFAULT_PORT})")
        assert f"here {ServerConfig().connection_limit})" in helps["--max-connections"]
        assert "(default: off;" in helps["--metrics-port"] and helps["--proxy-protocol"].endswith("(default: off)")


def test_one_sigint_shuts_down_gracefully_and_exits_0(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process("--grace", "5")
    client = ChatClient.connect(server.host, server.port, idle_timeout=30)
    # The reply proves the server is serving, so its signal handlers are installed (they are set before serving).
    client.request("hello")
    server.send_signal(signal.SIGINT)
    with pytest.raises(ClosedByServer) as bye:
        client.receive(timeout=5)
    assert bye.value.reason == "server shutting down"
    client.close()  # leaving at once: the shutdown need not wait out the grace period
    code, err = server.wait(timeout=10), server.stderr_text()
    assert code == 0, err
    assert "SIGINT: shutting down" in err and "stopped" in err
    assert "KeyboardInterrupt" not in err and "second signal" not in err


def test_check_is_the_health_check(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process()
    healthy = geventchat("check", "--host", server.host, "--port", str(server.port))
    assert healthy.returncode == 0, healthy.stderr
    code = server.stop()
    assert code == 0, server.stderr_text()
    gone = geventchat("check", "--host", server.host, "--port", str(server.port), "--timeout", "2")
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"unhealthy: {server.host}:{server.port}: ") and "Traceback" not in gone.stderr


LOADTEST_BLOCKED = """
import sys
sys.modules["geventchat.loadtest.command"] = None  # what an install without the module looks like to import
from geventchat import cli
raise SystemExit(cli.main(["loadtest", "--headless", "-u", "1"]))
"""


def test_loadtest_without_the_load_tester_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOADTEST_BLOCKED], capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(LOADTEST_MISSING), result.stderr


def test_loadtest_hands_every_argument_to_the_load_tester(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    fake = types.ModuleType("geventchat.loadtest.command")
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "geventchat.loadtest.command", fake)
    args = ["--help", "--headless", "-u", "3", "--gc-scenario", "chat", "--", "extra"]
    assert cli.main(["loadtest", *args]) == 7
    assert seen == [args]  # untouched: Locust parses them, --help included


def test_the_healthcheck_module_still_runs_for_the_dockerfile(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process()
    result = subprocess.run(
        [sys.executable, "-m", "geventchat.healthcheck", server.host, str(server.port)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
