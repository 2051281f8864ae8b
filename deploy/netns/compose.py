"""docker-compose.yml → the commands the lab runs (pure: reads files, starts nothing).

Compose's variable substitution and ``--env-file`` reading, each service's command, environment, ports, replicas
and bind mounts as ``docker compose config`` would show them, and the command each namespace host runs: its
service's own, with service names replaced by the hosts' addresses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .topology import (
    COMPOSE_FILE,
    HEADLESS_ENV,
    HOST_SERVICE,
    NOT_IN_THE_PROOF,
    ROOT,
    host_address,
    service_addresses,
)

#: Compose variables the proof sets on top of deploy/headless.env: a short run, and per-connection server logs
#: (the DEBUG "connected" lines are where the real client addresses show).
PROOF_VARIABLES = {
    "SERVER_LOG_LEVEL": "DEBUG",
    "LOCUST_USERS": "10",
    "LOCUST_SPAWN_RATE": "10",
    "LOCUST_RUN_TIME": "4s",
    "LOCUST_EXPECT_WORKERS_MAX_WAIT": "20",
    # The failover phase waits for the survivors to announce server host 1's members '(server lost)'.
    "SERVER_PRESENCE_TTL": "2",
}
#: Arguments the proof adds to the master's compose command, only to read the results back.
PROOF_ONLY_MASTER_ARGS = ("--json-file",)
#: Arguments the proof adds to the redis service's command: the image builds Redis with protected mode off (it
#: answers other containers without a password); Debian's redis-server keeps it on and then drops every client not on
#: loopback, so the proof turns it off as the image does, and binds to its host's address and to loopback (where the
#: compose health check asks) only. ``{address}`` is the redis host's address.
PROOF_ONLY_REDIS_ARGS = ("--protected-mode", "no", "--bind", "{address}", "127.0.0.1")

_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's variable substitution: ``${VAR}``, ``$VAR``, ``${VAR:-default}``, ``${VAR-default}``, ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = variables.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return current if current is not None else arg
        if (op == ":?" and not current) or (op == "?" and current is None):
            raise ValueError(f"compose variable {name} is required: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, blank lines ignored), as docker compose's ``--env-file`` reads them."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {raw!r}")
        values[key.strip()] = value.strip()
    return values


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    import yaml  # the dev extra; only this pure part and the tests need it

    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict) or "services" not in loaded:
        raise ValueError(f"{path} has no services")
    return loaded


@dataclass(frozen=True)
class ServicePlan:
    """One compose service, interpolated: its command, environment, ports and replicas."""

    name: str
    command: tuple[str, ...]
    environment: dict[str, str]
    #: Container ports it listens on (``expose`` and the targets of ``ports``).
    ports: tuple[int, ...]
    replicas: int
    #: ``(host path, container path)`` of each bind mount.
    volumes: tuple[tuple[str, str], ...] = ()
    #: The compose ``healthcheck`` command as an argv (``CMD-SHELL`` through ``sh -c``); empty if none or disabled.
    healthcheck: tuple[str, ...] = ()


def plan_services(compose: Mapping[str, Any], variables: Mapping[str, str]) -> dict[str, ServicePlan]:
    """Every service of the compose file with ``variables`` substituted (what ``docker compose config`` shows)."""
    plans = {}
    for name, spec in compose["services"].items():
        command = tuple(interpolate(str(part), variables) for part in spec.get("command", ()))
        environment = {
            key: interpolate(str(value), variables) for key, value in (spec.get("environment") or {}).items()
        }
        ports = [int(interpolate(str(port), variables)) for port in spec.get("expose", ())]
        for mapping in spec.get("ports", ()):
            ports.append(int(interpolate(str(mapping), variables).rsplit(":", 1)[1]))
        replicas = int(interpolate(str(spec.get("deploy", {}).get("replicas", 1)), variables))
        volumes = []
        for volume in spec.get("volumes", ()):
            source, target = interpolate(str(volume), variables).split(":")[:2]
            volumes.append((source, target))
        healthcheck = _healthcheck_argv(spec.get("healthcheck") or {}, variables)
        plans[name] = ServicePlan(name, command, environment, tuple(ports), replicas, tuple(volumes), healthcheck)
    return plans


def _healthcheck_argv(spec: Mapping[str, Any], variables: Mapping[str, str]) -> tuple[str, ...]:
    """Compose's ``healthcheck.test``: ``[CMD, argv...]``, ``[CMD-SHELL, line]`` or a plain string (a shell line)."""
    test = spec.get("test")
    if spec.get("disable") or test is None:
        return ()
    parts = [interpolate(str(part), variables) for part in ([test] if isinstance(test, str) else test)]
    if isinstance(test, str):
        return ("sh", "-c", parts[0])
    kind, rest = parts[0], parts[1:]
    if kind == "NONE":
        return ()
    if kind == "CMD-SHELL":
        return ("sh", "-c", " ".join(rest))
    if kind != "CMD":
        raise ValueError(f"healthcheck test must start with CMD, CMD-SHELL or NONE, not {kind!r}")
    return tuple(rest)


def scrape_targets(services: Mapping[str, ServicePlan]) -> list[tuple[str, int]]:
    """``(service name, port)`` of every DNS discovery in the Prometheus config the ``prometheus`` service mounts
    (as ``docker compose`` would mount it): what Prometheus scrapes, one port per server worker."""
    import yaml

    (source,) = (host for host, target in services["prometheus"].volumes if target.endswith("prometheus.yml"))
    config = yaml.safe_load((ROOT / source).read_text())
    return [
        (str(name), int(discovery["port"]))
        for job in config["scrape_configs"]
        for discovery in job.get("dns_sd_configs", ())
        for name in discovery["names"]
    ]


_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<host>[A-Za-z0-9_.-]+)(?P<rest>(?::\d+)?(?:/.*)?)")


def _replace_service_names(text: str, names: Mapping[str, str]) -> str:
    """``lb`` → ``10.231.0.10``, ``lb:8888`` → ``10.231.0.10:8888``, ``redis://redis:6379/0`` →
    ``redis://10.231.0.30:6379/0``; other strings unchanged."""
    url = _URL.fullmatch(text)
    if url is not None and url.group("host") in names:
        return url.group("scheme") + names[url.group("host")] + url.group("rest")
    host, sep, port = text.rpartition(":") if ":" in text else (text, "", "")
    if host in names and (not sep or port.isdigit()):
        return names[host] + sep + port
    return text


@dataclass(frozen=True)
class HostCommand:
    """What the proof runs on one namespace host."""

    host: str
    service: str
    argv: tuple[str, ...]
    environment: dict[str, str] = field(default_factory=dict)


def plan_hosts(services: Mapping[str, ServicePlan], *, json_file: str = "locust") -> dict[str, HostCommand]:
    """The command each namespace host runs: its service's compose command and environment, with service names
    replaced by host addresses (single-address services only: ``server`` is found through DNS by HAProxy).

    Raises :class:`ValueError` if the compose file has a service that no host plays and that
    :data:`~.topology.NOT_IN_THE_PROOF` does not excuse (or names one that is gone)."""
    unplanned = set(services) - set(HOST_SERVICE.values()) - set(NOT_IN_THE_PROOF)
    missing = (set(HOST_SERVICE.values()) | set(NOT_IN_THE_PROOF)) - set(services)
    if unplanned or missing:
        raise ValueError(
            f"docker-compose.yml and deploy/netns/topology.py disagree: services no host plays {sorted(unplanned)}, "
            f"services the proof expects that compose lacks {sorted(missing)}"
        )
    names = {service: addresses[0] for service, addresses in service_addresses().items() if len(addresses) == 1}
    commands = {}
    for host, service in HOST_SERVICE.items():
        spec = services[service]
        if service == "lb":
            # The haproxy image's own command is 'haproxy -f /usr/local/etc/haproxy/haproxy.cfg' with the repo's
            # file mounted there; here the same file is used in place. -db: foreground, logs to stdout.
            (source,) = (host_path for host_path, target in spec.volumes if target.endswith("haproxy.cfg"))
            argv: tuple[str, ...] = ("haproxy", "-db", "-f", str((ROOT / source).resolve()))
        else:
            argv = tuple(_replace_service_names(part, names) for part in spec.command)
        if service == "locust-master":
            argv += (PROOF_ONLY_MASTER_ARGS[0], json_file)
        if service == "redis":
            argv += tuple(part.format(address=host_address(host)) for part in PROOF_ONLY_REDIS_ARGS)
        environment = {key: _replace_service_names(value, names) for key, value in spec.environment.items()}
        commands[host] = HostCommand(host, service, argv, environment)
    return commands


def proof_variables(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The compose variables of a proof run: deploy/headless.env, then the proof's own, then ``extra``."""
    return {**read_env_file(HEADLESS_ENV), **PROOF_VARIABLES, **extra}
