"""docker-compose.yml, the Dockerfile, haproxy.cfg and the namespace proof: valid, and in step with each other.

The namespace proof derives every command from docker-compose.yml; these tests pin down that derivation (so the
proof cannot quietly run something other than the compose file) and the facts the files must agree on (ports,
names, replicas, the PROXY protocol on both ends). The proof itself runs last, as root, when it can.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.netns.compose import (
    PROOF_ONLY_MASTER_ARGS,
    PROOF_ONLY_REDIS_ARGS,
    ServicePlan,
    interpolate,
    load_compose,
    plan_hosts,
    plan_services,
    proof_variables,
    read_env_file,
    scrape_targets,
)
from deploy.netns.dns import dns_answer
from deploy.netns.lab import Unavailable, check_available
from deploy.netns.proof import connected_ports, server_seen
from deploy.netns.topology import DOCKER_DNS, HAPROXY_ADMIN, HOST_SERVICE, NOT_IN_THE_PROOF, host_address
from geventchat.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = (ROOT / "deploy" / "haproxy.cfg").read_text()
SERVICES = {"server", "lb", "locust-master", "locust-worker", "prometheus", "redis"}


def option(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


# --------------------------------------------------------------------------------------- compose semantics


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}/${EMPTY:-d}/${UNSET:-d}", env) == "x/d/d"
    assert interpolate("${SET-d}/${EMPTY-d}/${UNSET-d}", env) == "x//d"
    assert interpolate("$SET ${SET} $$SET $UNSET.", env) == "x x $SET ."
    with pytest.raises(ValueError, match="UNSET is required: say so"):
        interpolate("${UNSET:?say so}", env)
    with pytest.raises(ValueError, match="EMPTY is required"):
        interpolate("${EMPTY:?}", env)
    assert interpolate("${EMPTY?}", env) == ""


def test_env_file_reading(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("# comment\n\nA=1\n B = two words \nC=\n")
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": ""}
    path.write_text("NOEQUALS\n")
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        read_env_file(path)


# ------------------------------------------------------------------------------ the files agree with each other


def test_services_and_their_defaults(compose: dict[str, Any]) -> None:
    services = plan_services(compose, {})
    assert set(services) == SERVICES
    server = services["server"].command
    assert server[:2] == ("geventchat", "serve")
    assert option(server, "--host") == "0.0.0.0" and "--proxy-protocol" in server
    assert int(option(server, "--workers")) >= 2
    assert services["locust-master"].command == ("locust", "--master")
    assert services["locust-worker"].command == ("locust", "--worker", "--master-host", "locust-master")
    master_env = services["locust-master"].environment
    # `docker compose up` with no arguments: load starts at once, runs until stopped, UI published.
    assert master_env["LOCUST_AUTOSTART"] == "true" and master_env["LOCUST_HEADLESS"] == "false"
    assert master_env["LOCUST_RUN_TIME"] == "0"
    assert 8089 in services["locust-master"].ports
    # Every knob is a variable: changing the environment changes the plan.
    tuned = plan_services(compose, {"LOCUST_USERS": "7", "SERVER_WORKERS": "3", "LOCUST_WORKERS": "5"})
    assert tuned["locust-master"].environment["LOCUST_USERS"] == "7"
    assert option(tuned["server"].command, "--workers") == "3"
    assert tuned["locust-worker"].replicas == 5 and tuned["locust-master"].environment["LOCUST_EXPECT_WORKERS"] == "5"
    # The servers share rooms through the redis service, which keeps nothing on disk.
    assert option(server, "--redis") == "redis://redis:6379/0"
    assert option(server, "--presence-ttl") == "10"
    assert option(plan_services(compose, {"SERVER_PRESENCE_TTL": "2"})["server"].command, "--presence-ttl") == "2"
    redis = services["redis"].command
    assert redis[0] == "redis-server" and option(redis, "--save") == "" and option(redis, "--appendonly") == "no"
    assert services["redis"].replicas == 1


def test_every_load_tester_option_in_compose_exists(compose: dict[str, Any]) -> None:
    """``LOCUST_GC_*`` variables set ``--gc-*`` options of loadtest/locustfile.py, but Locust ignores unknown
    variables silently: pass each as an option with its compose default, which Locust refuses if it is unknown or
    its value does not parse. (Locust runs in a subprocess: importing it monkey-patches the importing process.)"""
    environment = plan_services(compose, {})["locust-master"].environment
    options = [
        part
        for name, value in environment.items()
        if name.startswith("LOCUST_GC_")
        for part in ("--" + name[len("LOCUST_") :].lower().replace("_", "-"), value)
    ]
    assert options

    def locust_list(*args: str) -> subprocess.CompletedProcess[str]:
        locust = str(Path(sys.executable).parent / "locust")
        command = [locust, "-f", "loadtest/locustfile.py", "--list", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)

    accepted = locust_list(*options)
    assert accepted.returncode == 0, accepted.stderr
    assert "ChatUser" in accepted.stdout
    assert locust_list("--gc-no-such-option", "1").returncode != 0  # the check can fail


def test_ports_agree_across_compose_haproxy_and_locust(compose: dict[str, Any]) -> None:
    services = plan_services(compose, {})
    server_port = int(option(services["server"].command, "--port"))
    assert server_port in services["server"].ports
    (template,) = re.findall(r"^\s*server-template \S+ \S+ server:(\d+)", HAPROXY_CFG, re.MULTILINE)
    assert int(template) == server_port
    frontend = re.search(r"^frontend chat\n\s+bind :(\d+)", HAPROXY_CFG, re.MULTILINE)
    assert frontend is not None
    lb_port = int(frontend.group(1))
    assert lb_port in services["lb"].ports
    assert services["locust-master"].environment["LOCUST_HOST"] == f"lb:{lb_port}"
    stats = re.search(r"^frontend stats\n(?:.*\n)*?\s+bind :(\d+)", HAPROXY_CFG, re.MULTILINE)
    assert stats is not None and int(stats.group(1)) in services["lb"].ports
    # The servers' broker is the redis service, on the port it listens on and its health check asks.
    broker = re.fullmatch(r"redis://redis:(\d+)/\d+", option(services["server"].command, "--redis"))
    assert broker is not None
    redis_port = int(broker.group(1))
    assert redis_port in services["redis"].ports
    assert int(option(services["redis"].command, "--port")) == redis_port
    assert option(services["redis"].healthcheck, "-p") == str(redis_port)
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE) for p in line.split()}
    assert {server_port, 8089} <= exposed


def test_proxy_protocol_is_on_at_both_ends_and_health_checks_use_it(compose: dict[str, Any]) -> None:
    assert "--proxy-protocol" in plan_services(compose, {})["server"].command
    assert re.search(r"^\s*default-server .*\bsend-proxy(-v2)?\b", HAPROXY_CFG, re.MULTILINE)
    # Health checks must send the header too, or every check is logged as a misconfigured balancer.
    assert "tcp-check connect default" in HAPROXY_CFG


def test_haproxy_finds_replicas_through_docker_dns(compose: dict[str, Any]) -> None:
    assert re.search(rf"^\s*nameserver \S+ {re.escape(DOCKER_DNS)}:53$", HAPROXY_CFG, re.MULTILINE)
    assert re.search(r"^\s*default-server .*\bresolvers docker\b.*\binit-addr none\b", HAPROXY_CFG, re.MULTILINE)
    host, port = HAPROXY_ADMIN
    assert f"stats socket ipv4@{host}:{port} " in HAPROXY_CFG
    (volume,) = plan_services(compose, {})["lb"].volumes
    assert volume == ("./deploy/haproxy.cfg", "/usr/local/etc/haproxy/haproxy.cfg")


def test_dockerfile_is_slim_non_root_single_image_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert bases and all(base.startswith("python:") and base.endswith("-slim") for base in bases)
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in final_stage
    assert "pip install" not in final_stage and "apt-get" not in final_stage  # nothing built in the final image
    user = re.search(r"^USER (\S+)$", final_stage, re.MULTILINE)
    assert user is not None and user.group(1) not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*geventchat\.healthcheck", final_stage, re.MULTILINE)
    extras = re.search(r'pip install "\.\[([a-z,]+)\]"', dockerfile)
    # One image for all: Locust from the loadtest extra; --metrics-port needs nothing beyond the core install.
    assert extras is not None and "loadtest" in extras.group(1).split(",")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"!geventchat/", "!loadtest/", "!pyproject.toml"} <= set(ignored)
    # What the build reads besides the package (readme, license-files) reaches the build stage.
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the project supports 3.10)
    readme = re.search(r'^readme = "([^"]+)"$', pyproject, re.MULTILINE)
    licenses = re.search(r"^license-files = \[(.*)\]$", pyproject, re.MULTILINE)
    assert readme is not None and licenses is not None
    build_reads = {readme.group(1), *json.loads(f"[{licenses.group(1)}]")}
    assert build_reads == {"README.md", "LICENSE"}
    copied = re.search(r"^COPY ((?:\S+ )+)\./$", dockerfile.split("\nFROM ", 2)[1], re.MULTILINE)
    assert copied is not None and build_reads <= set(copied.group(1).split())
    assert {f"!{name}" for name in build_reads} <= set(ignored)


# -------------------------------------------------------------------------- what compose promises an operator


def seconds(duration: str) -> float:
    """A compose duration (``15s``, ``1m30s``, ``500ms``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[u] for n, u in parts)


def test_compose_durations_are_read_as_compose_reads_them() -> None:
    assert seconds("15s") == 15 and seconds("1m30s") == 90 and seconds("500ms") == 0.5
    with pytest.raises(AssertionError):
        seconds("15")


def test_services_start_after_their_dependencies_are_healthy(compose: dict[str, Any]) -> None:
    specs = compose["services"]
    # HAProxy after every server greets; Locust after HAProxy routes; the workers after the master has started.
    # The servers after Redis answers (a server without its broker would answer room commands with an error).
    assert specs["server"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert specs["lb"]["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert specs["locust-master"]["depends_on"] == {"lb": {"condition": "service_healthy"}}
    assert specs["locust-worker"]["depends_on"] == {"locust-master": {"condition": "service_started"}}
    plans = plan_services(compose, {})
    waited_on = {
        dependency
        for spec in specs.values()
        for dependency, how in (spec.get("depends_on") or {}).items()
        if how["condition"] == "service_healthy"
    }
    assert waited_on == {"redis", "server", "lb"}
    for name in waited_on:  # a service_healthy wait on a service with no health check would never end
        assert plans[name].healthcheck, name
    # The server's check is the image's, stated in compose (the Dockerfile's HEALTHCHECK runs the same command).
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_check = re.search(r'CMD \[("python".*)\]\s*$', dockerfile.split("HEALTHCHECK", 1)[1], re.MULTILINE)
    assert image_check is not None
    assert plans["server"].healthcheck == tuple(json.loads(f"[{image_check.group(1)}]"))
    assert plans["server"].healthcheck[-1] == option(plans["server"].command, "--port")
    # HAProxy's check asks its own admin socket (haproxy.cfg's 'stats socket') for the backend's status.
    host, port = HAPROXY_ADMIN
    assert f"/dev/tcp/{host}/{port}" in plans["lb"].healthcheck[-1]
    assert "servers,BACKEND," in plans["lb"].healthcheck[-1]
    assert plans["redis"].healthcheck[0] == "redis-cli" and plans["redis"].healthcheck[-1] == "ping"


def test_stop_grace_outlasts_the_server_drain(compose: dict[str, Any]) -> None:
    server = plan_services(compose, {})["server"]
    assert "--grace" not in server.command  # so the drain is the default's
    defaults = ServerConfig()
    # The drain: up to --grace for clients to leave after 'bye: server shutting down', then up to linger to close
    # the rest (the server waits 1 s for them, less than linger).
    drain = defaults.grace + defaults.linger
    assert drain > 0
    grace_period = seconds(compose["services"]["server"]["stop_grace_period"])
    assert grace_period >= drain + 5  # margin for the supervisor and its workers to exit, on a loaded host


def test_restart_policies(compose: dict[str, Any]) -> None:
    restart = {name: str(spec.get("restart")) for name, spec in compose["services"].items()}
    # Long-running services come back after a crash or a daemon restart; a load test is a run, not a service.
    assert restart == {
        "server": "unless-stopped",
        "redis": "unless-stopped",
        "lb": "unless-stopped",
        "prometheus": "unless-stopped",
        "locust-master": "no",
        "locust-worker": "no",
    }


def test_haproxy_closes_sessions_of_a_server_marked_down() -> None:
    (template,) = re.findall(r"^\s*server-template .*$", HAPROXY_CFG, re.MULTILINE)
    assert re.search(r"\bon-marked-down shutdown-sessions\b", template)


def stats_section() -> str:
    """The lines of haproxy.cfg between the '.if' that guards 'frontend stats' and its '.endif'."""
    match = re.search(r"^\.if (.+)\n((?:(?!\.endif).*\n)*?)\.endif$", HAPROXY_CFG, re.MULTILINE)
    assert match is not None
    assert match.group(1) == 'strneq("$HAPROXY_STATS_PASSWORD","")'
    return match.group(2)


def test_haproxy_stats_exist_only_with_a_password_and_publish_on_loopback(compose: dict[str, Any]) -> None:
    section = stats_section()
    assert section.startswith("frontend stats\n")
    assert re.search(r'^\s+stats auth "\$HAPROXY_STATS_USER:\$HAPROXY_STATS_PASSWORD"$', section, re.MULTILINE)
    assert HAPROXY_CFG.count("frontend stats") == 1  # no unguarded copy
    lb = plan_services(compose, {})["lb"]
    # No default password: unset in the caller's environment, it is empty in the container.
    assert compose["services"]["lb"]["environment"]["HAPROXY_STATS_PASSWORD"] == "${HAPROXY_STATS_PASSWORD:-}"
    assert lb.environment["HAPROXY_STATS_PASSWORD"] == ""
    (stats_mapping,) = [str(p) for p in compose["services"]["lb"]["ports"] if str(p).endswith(":8404")]
    assert interpolate(stats_mapping, {}) == "127.0.0.1:8404:8404"
    assert interpolate(stats_mapping, {"HAPROXY_STATS_BIND": "0.0.0.0"}) == "0.0.0.0:8404:8404"


HAPROXY_IN_A_NETNS = r"""
import json, socket, subprocess, sys, time
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
haproxy = subprocess.Popen(["haproxy", "-db", "-f", sys.argv[1]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

def http(port, auth=None):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n" + (b"Authorization: Basic " + auth + b"\r\n" if auth else b"") + b"\r\n")
            return s.makefile("rb").readline().decode().strip()
    except ConnectionRefusedError:
        return "refused"

try:
    deadline = time.monotonic() + 10
    while http(8888) == "refused" and haproxy.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # HAProxy binds every frontend before it accepts on any: the chat one is up, so all are
    seen = {"chat": http(8888) != "refused", "anonymous": http(8404), "admin": http(8404, sys.argv[2].encode())}
    print(json.dumps(seen))
finally:
    haproxy.kill()
    haproxy.wait()
"""


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare (util-linux)")
@pytest.mark.parametrize("password", ["", "s3cret"])
def test_haproxy_stats_page_with_and_without_a_password(password: str) -> None:
    """deploy/haproxy.cfg, unchanged, in a network namespace of its own (its fixed ports clash with nothing):
    without a password nothing listens on 8404; with one, the page asks for it and opens with it."""
    env = {**os.environ, "HAPROXY_STATS_USER": "admin", "HAPROXY_STATS_PASSWORD": password}
    credentials = base64.b64encode(f"admin:{password}".encode()).decode()
    result = subprocess.run(
        [
            "unshare",
            "--net",
            sys.executable,
            "-c",
            HAPROXY_IN_A_NETNS,
            str(ROOT / "deploy" / "haproxy.cfg"),
            credentials,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["chat"]  # HAProxy ran this configuration
    if password:
        assert seen["anonymous"].startswith("HTTP/1.1 401")
        assert seen["admin"].startswith("HTTP/1.1 200")
    else:
        assert seen["anonymous"] == "refused" and seen["admin"] == "refused"


def test_prometheus_scrapes_every_worker_metrics_port_of_every_replica(compose: dict[str, Any]) -> None:
    services = plan_services(compose, {})
    server = services["server"]
    metrics_port = int(option(server.command, "--metrics-port"))
    assert option(server.command, "--metrics-host") == "0.0.0.0"  # reachable from the Prometheus container
    workers = int(option(server.command, "--workers"))
    targets = scrape_targets(services)
    # Found as HAProxy finds the replicas: the compose service name, resolved by Docker's DNS.
    (template_host,) = re.findall(r"^\s*server-template \S+ \S+ (\S+):\d+", HAPROXY_CFG, re.MULTILINE)
    assert {name for name, _ in targets} == {template_host} == {"server"}
    # Worker i serves --metrics-port + i: one discovery per worker of the compose default, no more, no fewer.
    ports = sorted(port for _, port in targets)
    assert ports == [metrics_port + i for i in range(workers)]
    assert set(ports) <= set(server.ports)  # and the compose file says the server listens there
    assert ("./deploy/prometheus.yml", "/etc/prometheus/prometheus.yml") in services["prometheus"].volumes
    assert 9090 in services["prometheus"].ports
    published = [interpolate(str(p), {}) for p in compose["services"]["prometheus"]["ports"]]
    assert published == ["127.0.0.1:9090:9090"]  # no authentication: loopback unless the operator says otherwise


def test_plan_hosts_refuses_a_service_the_proof_neither_plays_nor_excuses(compose: dict[str, Any]) -> None:
    services = plan_services(compose, {})
    assert plan_hosts(services)  # the real file plans
    extra = {**services, "grafana": ServicePlan("grafana", (), {}, (), 1)}
    with pytest.raises(ValueError, match=r"services no host plays \['grafana'\]"):
        plan_hosts(extra)
    without_prometheus = {name: plan for name, plan in services.items() if name != "prometheus"}
    with pytest.raises(ValueError, match=r"compose lacks \['prometheus'\]"):
        plan_hosts(without_prometheus)


def test_healthcheck_forms_are_read_as_compose_runs_them() -> None:
    def plan(healthcheck: dict[str, Any]) -> tuple[str, ...]:
        return plan_services({"services": {"x": {"healthcheck": healthcheck}}}, {"P": "9"})["x"].healthcheck

    assert plan({"test": ["CMD", "check", "${P}"]}) == ("check", "9")
    assert plan({"test": ["CMD-SHELL", "check $P"]}) == ("sh", "-c", "check 9")
    assert plan({"test": "check"}) == ("sh", "-c", "check")
    assert plan({"test": ["NONE"]}) == () and plan({"disable": True}) == () and plan({}) == ()
    with pytest.raises(ValueError, match="CMD, CMD-SHELL or NONE"):
        plan({"test": ["check"]})


# ------------------------------------------------------------------------ what the namespace proof really runs


def test_the_proof_runs_the_compose_commands_with_only_names_replaced(compose: dict[str, Any]) -> None:
    variables = proof_variables()
    services = plan_services(compose, variables)
    hosts = plan_hosts(services, json_file="out")
    # Every service is played by hosts or left out with a reason, never both.
    assert set(HOST_SERVICE.values()) | set(NOT_IN_THE_PROOF) == SERVICES
    assert not set(HOST_SERVICE.values()) & set(NOT_IN_THE_PROOF)
    assert all(reason.strip() for reason in NOT_IN_THE_PROOF.values())
    # As many hosts per service as the compose defaults start replicas.
    defaults = plan_services(compose, {})
    for service in set(HOST_SERVICE.values()):
        assert list(HOST_SERVICE.values()).count(service) == defaults[service].replicas, service
    names = {"lb": host_address("lb"), "locust-master": host_address("master")}
    for host, command in hosts.items():
        spec = services[command.service]
        if command.service == "lb":
            assert command.argv == ("haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg"))
            continue
        broker = f"redis://{host_address('redis')}:"
        expected = tuple(names.get(part, part).replace("redis://redis:", broker) for part in spec.command)
        if command.service == "locust-master":
            expected += (PROOF_ONLY_MASTER_ARGS[0], "out")
        if command.service == "redis":
            expected += tuple(part.format(address=host_address("redis")) for part in PROOF_ONLY_REDIS_ARGS)
        assert command.argv == expected, host
        assert command.environment == {
            key: value.replace("lb:", f"{names['lb']}:") for key, value in spec.environment.items()
        }, host
    assert hosts["worker1"].argv[-2:] == ("--master-host", host_address("master"))
    assert option(hosts["server1"].argv, "--redis") == f"redis://{host_address('redis')}:6379/0"
    assert option(hosts["redis"].argv, "--bind") == host_address("redis")
    assert option(hosts["server1"].argv, "--presence-ttl") == variables["SERVER_PRESENCE_TTL"]
    # The proof is the headless profile plus a short run and DEBUG server logs, nothing else.
    headless = read_env_file(ROOT / "deploy" / "headless.env")
    assert headless["LOCUST_HEADLESS"] == "true" and headless["LOCUST_AUTOSTART"] == "false"
    assert set(variables) - set(headless) <= {
        "SERVER_LOG_LEVEL",
        "LOCUST_RUN_TIME",
        "LOCUST_USERS",
        "LOCUST_SPAWN_RATE",
        "LOCUST_EXPECT_WORKERS_MAX_WAIT",
        "SERVER_PRESENCE_TTL",
    }
    assert option(hosts["server1"].argv, "--log-level") == "DEBUG"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed")
@pytest.mark.parametrize("password", ["", "s3cret"])  # the statistics section left out, and in
def test_haproxy_accepts_the_config(password: str) -> None:
    result = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "HAPROXY_STATS_USER": "admin", "HAPROXY_STATS_PASSWORD": password},
    )
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed")
@pytest.mark.parametrize("env_file", [None, "deploy/headless.env"])
def test_docker_compose_config_validates_and_agrees_with_our_interpolation(
    compose: dict[str, Any], env_file: str | None, tmp_path: Path
) -> None:
    args = ["docker-compose", *(["--env-file", env_file] if env_file else []), "config"]
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)}  # no stray LOCUST_* from the caller
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)["services"]
    ours = plan_services(compose, read_env_file(ROOT / env_file) if env_file else {})
    assert set(rendered) == SERVICES
    for name, plan in ours.items():
        assert tuple(rendered[name].get("command", ())) == plan.command, name
        assert {k: str(v) for k, v in (rendered[name].get("environment") or {}).items()} == plan.environment, name
        assert rendered[name].get("deploy", {}).get("replicas", 1) == plan.replicas, name
        check = rendered[name].get("healthcheck", {})
        assert (tuple(check["test"][1:]) if "test" in check and not check.get("disable") else ()) == plan.healthcheck
    # docker-compose accepts the start order and reads it as we do.
    assert rendered["server"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert rendered["lb"]["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert rendered["locust-master"]["depends_on"] == {"lb": {"condition": "service_healthy"}}


# ---------------------------------------------------------------------------------------- the DNS stand-in


def dns_query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    # HAProxy adds an EDNS OPT record (ARCOUNT 1); the stand-in ignores it.
    opt = b"\x00" + struct.pack("!HHIH", 41, 8192, 0, 0)
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1) + labels + b"\x00" + struct.pack("!HH", qtype, 1) + opt


def test_dns_answers_every_replica_address_and_nxdomain_otherwise() -> None:
    records = {"server": ["10.231.0.11", "10.231.0.12"]}
    query = dns_query("server")
    reply = dns_answer(query, records)
    assert reply is not None
    ident, flags, questions, answers = struct.unpack_from("!HHHH", reply)
    assert (ident, flags & 0x800F, questions, answers) == (0x1234, 0x8000, 1, 2)
    question = query[12 : len(query) - 11]  # without the OPT record
    assert reply[12 : 12 + len(question)] == question
    records_part = reply[12 + len(question) :]
    assert [records_part[i : i + 12] for i in (0, 16)] == [b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04"] * 2
    assert [socket.inet_ntoa(records_part[i : i + 4]) for i in (12, 28)] == records["server"]
    aaaa = dns_answer(dns_query("SERVER", qtype=28), records)
    assert aaaa is not None and struct.unpack_from("!HH", aaaa, 2) == (0x8180, 1)  # NOERROR, no answer
    unknown = dns_answer(dns_query("nosuch"), records)
    assert unknown is not None and struct.unpack_from("!H", unknown, 2)[0] & 0xF == 3  # NXDOMAIN
    assert dns_answer(b"\x00" * 5, records) is None
    assert dns_answer(reply, records) is None  # a response is not a query


# ------------------------------------------------------------------------------------- the namespace proof


def _proof_unavailable() -> str | None:
    try:
        check_available()
    except Unavailable as exc:
        return str(exc)
    return None


@pytest.mark.timeout(110)
def test_namespace_proof(tmp_path: Path) -> None:
    """Seven namespaces, HAProxy, two servers, Locust master and two workers: see deploy/netns/."""
    reason = _proof_unavailable()
    if reason is not None:
        pytest.skip(f"netns proof not run: {reason}")
    report_path = tmp_path / "report.json"
    # No --locustfile: the proof runs the compose default, loadtest/locustfile.py, with its default scenarios.
    result = subprocess.run(
        [sys.executable, "-m", "deploy.netns", "--report", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    # The operator's side: the lb's compose health check passed, no stats page without a password, and every port
    # Prometheus scrapes served metrics on both server hosts.
    assert report["operations"] == {"lb_healthcheck": "passed", "stats_port": "refused", "metrics_ports": [9888, 9889]}
    assert report["steady"]["failures"] == 0 and report["steady"]["requests"] > 0
    for server in ("server1", "server2"):
        seen = report["steady_servers"][server]
        assert seen["client_connections"] and set(seen["client_connections"]) <= {
            host_address("worker1"),
            host_address("worker2"),
        }
    after_down = report["failover"]["new_connections_after_down"]
    assert after_down["server1"] == 0 and after_down["server2"] > 0
    assert report["failover"]["victim_status_end"].startswith("DOWN")
    # Chat through Redis on its own host: each room had members on both server hosts, every room line reached every
    # other member (none lost or doubled), and some went from one server host to the other.
    chat = report["chat"]
    assert chat["clients_per_host"]["server1"] > 0 and chat["clients_per_host"]["server2"] > 0
    assert chat["expected"] > 0 and chat["delivered"] == chat["expected"] and chat["exact"]
    assert chat["cross_host"] > 0
    # Server host 1 killed: server host 2's members got every '(server lost)' notice, within the TTL's bound.
    lost = report["server_lost"]
    assert lost["expected"] > 0 and lost["received"] == lost["expected"] and lost["unexpected"] == 0
    assert lost["presence_ttl"] == 2.0 and 0 < lost["latest_after_kill"] <= lost["bound"]
    assert report["leftovers"] == []


def test_server_logs_are_read_per_source_address() -> None:
    log = "\n".join(
        [
            "2026-11-26 20:01:32,532 INFO geventchat: serving up to 19000 connections",
            "2026-11-26 20:01:33,000 DEBUG geventchat.server[41]: 10.231.0.10:38618 connected",
            "2026-11-26 20:01:33,001 DEBUG geventchat.server[42]: 10.231.0.21:40000 connected",
            "2026-11-26 20:01:33,002 DEBUG geventchat.server[42]: 10.231.0.21:40000: MessageReceived('hi')",
            "2026-11-26 20:01:33,003 DEBUG geventchat.server: 10.231.0.22:40001 connected",
            "2026-11-26 20:01:33,004 DEBUG geventchat.server: 10.231.0.22:40001: MessageReceived('x connected')",
            "2026-11-26 20:01:33,005 DEBUG geventchat.server: 10.231.0.22:40001: TimeoutNegotiated(30.0)",
        ]
    )
    seen = server_seen(log)
    assert connected_ports(log, "10.231.0.22") == {40001} and connected_ports(log, "10.231.0.20") == set()
    assert seen.connections == {"10.231.0.10": 1, "10.231.0.21": 1, "10.231.0.22": 1}
    assert seen.messages == {"10.231.0.21": 1, "10.231.0.22": 1}
