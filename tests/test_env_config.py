"""``GEVENTCHAT_<OPTION>``: every server option from the environment, a flag winning over it, and a bad value
failing like a bad flag, naming the variable. Real subprocesses: the environment is read at the entry point only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from geventchat.client import ChatClient, ClosedByServer
from geventchat.envconfig import variable_name
from geventchat.options import server_parser
from geventchat.testing import QUIET, ServerProcess


def geventchat(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geventchat", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        env={**os.environ, **env},
    )


def test_every_server_option_has_a_variable_name() -> None:
    names = {
        variable_name(next(o for o in action.option_strings if o.startswith("--")))
        for action in server_parser()._actions
        if any(o.startswith("--") for o in action.option_strings)
    }
    assert {"GEVENTCHAT_MAX_CONNECTIONS", "GEVENTCHAT_PROXY_PROTOCOL", "GEVENTCHAT_LOG_FORMAT"} <= names
    assert len(names) >= 25  # one per option, none lost to a clash


def test_options_from_the_environment_reach_the_server() -> None:
    env = {"GEVENTCHAT_PREFIX": "env> ", "GEVENTCHAT_MAX_CONNECTIONS": "1", "GEVENTCHAT_LOG_LEVEL": "debug"}
    server = ServerProcess(*QUIET, env=env)
    try:
        with ChatClient.connect(server.host, server.port, idle_timeout=30, prefix="env> ") as first:
            assert first.request("hi").message == "hi"  # the prefix came from GEVENTCHAT_PREFIX
            with pytest.raises(ClosedByServer) as full:  # the cap of 1 came from GEVENTCHAT_MAX_CONNECTIONS
                ChatClient.connect(server.host, server.port, idle_timeout=30, prefix="env> ")
            assert full.value.reason == "server full"
        code, err = server.stop(), server.stderr_text()
        assert code == 0
        assert " DEBUG " in err  # GEVENTCHAT_LOG_LEVEL, lower case accepted as on the command line
    finally:
        server.close()


def test_a_flag_wins_over_the_environment() -> None:
    server = ServerProcess(*QUIET, "--prefix", "flag> ", env={"GEVENTCHAT_PREFIX": "env> "})
    try:
        with ChatClient.connect(server.host, server.port, idle_timeout=30, prefix="flag> ") as client:
            assert client.request("x").message == "x"
    finally:
        server.close()


def test_an_on_off_flag_from_the_environment() -> None:
    server = ServerProcess(*QUIET, "--log-level", "DEBUG", env={"GEVENTCHAT_PROXY_PROTOCOL": "yes"})
    try:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            sock.sendall(b"PROXY TCP4 198.51.100.7 203.0.113.1 40022 8888\r\n")
            assert sock.recv(4096)  # the greeting, sent once the header was read
        code, err = server.stop(), server.stderr_text()
        assert code == 0
        # Only a server reading PROXY headers logs the address the header carried.
        assert "198.51.100.7:40022 connected" in err, err
    finally:
        server.close()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GEVENTCHAT_PORT", "abc", "'abc' is not a whole number"),
        ("GEVENTCHAT_MAX_CONNECTIONS", "0", "'0' must be >= 1"),
        ("GEVENTCHAT_FRAMING", "xml", "invalid choice: 'xml'"),
        ("GEVENTCHAT_PROXY_PROTOCOL", "maybe", "'maybe' is not one of 1/0, true/false, yes/no, on/off"),
        ("GEVENTCHAT_MIN_TIMEOUT", "nan", "must be a finite number > 0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_and_exit_2(variable: str, value: str, message: str) -> None:
    result = geventchat("--port", "0", env={variable: value})
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith(f"geventchat serve: error: environment {variable}: "), result.stderr
    assert message in error_lines[0]
    assert "Traceback" not in result.stderr


def test_the_same_bad_value_as_a_flag_gives_the_same_reason() -> None:
    from_flag = geventchat("--port", "abc", env={})
    from_env = geventchat(env={"GEVENTCHAT_PORT": "abc"})
    assert from_flag.returncode == from_env.returncode == 2
    assert "argument --port: 'abc' is not a whole number" in from_flag.stderr
    assert "environment GEVENTCHAT_PORT: 'abc' is not a whole number" in from_env.stderr


def test_the_client_ignores_the_server_variables() -> None:
    # A bad server variable must not break other commands: only 'serve' reads the environment.
    result = geventchat("client", "--version", env={"GEVENTCHAT_PORT": "abc"})
    assert result.returncode == 0 and result.stdout.startswith("geventchat "), result.stderr
