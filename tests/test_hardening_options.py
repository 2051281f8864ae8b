"""The hardening options: parsed once at the entry point into ServerConfig, validated there."""

from __future__ import annotations

import pytest

from geventchat.config import ServerConfig
from geventchat.limits import AddressLimiter
from geventchat.options import server_config, server_parser


def parse(*argv: str) -> ServerConfig:
    return server_config(server_parser().parse_args(list(argv)))


def test_defaults_are_safe() -> None:
    config = parse()
    assert config.host == "127.0.0.1" and config.metrics_host == "127.0.0.1"
    assert config.max_per_ip is None and config.metrics_port is None and config.tls_cert is None
    assert config.handshake_timeout == 10.0 < config.protocol.default_timeout


def test_options_reach_the_config() -> None:
    config = parse(
        "--max-per-ip", "8", "--handshake-timeout", "2.5", "--tls-cert", "c.pem", "--tls-key", "k.pem",
        "--metrics-port", "9100", "--metrics-host", "0.0.0.0",
    )  # fmt: skip
    assert (config.max_per_ip, config.handshake_timeout) == (8, 2.5)
    assert (config.tls_cert, config.tls_key) == ("c.pem", "k.pem")
    assert (config.metrics_port, config.metrics_host) == (9100, "0.0.0.0")


@pytest.mark.parametrize(
    "argv",
    [("--max-per-ip", "0"), ("--handshake-timeout", "0"), ("--handshake-timeout", "nan"), ("--metrics-port", "70000")],
)
def test_bad_values_are_refused(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_config_checks_its_own_invariants() -> None:
    with pytest.raises(ValueError, match="tls_key needs tls_cert"):
        ServerConfig(tls_key="k.pem")
    with pytest.raises(ValueError, match="max_per_ip"):
        ServerConfig(max_per_ip=0)
    with pytest.raises(ValueError, match="handshake_timeout"):
        ServerConfig(handshake_timeout=float("inf"))


def test_address_limiter_counts_per_host_and_forgets_idle_hosts() -> None:
    limiter = AddressLimiter(2)
    assert limiter.acquire("10.0.0.1") and limiter.acquire("10.0.0.1")
    assert not limiter.acquire("10.0.0.1")
    assert limiter.acquire("10.0.0.2")
    limiter.release("10.0.0.1")
    assert limiter.count("10.0.0.1") == 1 and limiter.acquire("10.0.0.1")
    for host in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        limiter.release(host)
    assert len(limiter) == 0


def test_comparison_models_refuse_the_gevent_only_options(capsys: pytest.CaptureFixture[str]) -> None:
    from geventchat.cli import main

    assert main(["--model", "thread", "--port", "0", "--max-per-ip", "3", "--metrics-port", "0"]) == 2
    error = capsys.readouterr().err
    assert "--max-per-ip, --metrics-port applies to the gevent model only, not to --model thread" in error
