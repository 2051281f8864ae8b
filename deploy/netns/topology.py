"""What the lab looks like: the namespace hosts, their addresses, the compose service each plays, and the two
loopback addresses haproxy.cfg names. The repository's files (docker-compose.yml, deploy/) are found from here."""

from __future__ import annotations

from pathlib import Path

#: The repository: every process of the lab runs from here, as the image's processes run from /app.
ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
HEADLESS_ENV = ROOT / "deploy" / "headless.env"

#: The test subnet. It exists only on the veths inside this run's namespaces.
SUBNET_PREFIX = "10.231.0"
SUBNET_BITS = 24
#: Host name → last octet; the compose service each host plays is in HOST_SERVICE.
HOST_OCTET = {"lb": 10, "server1": 11, "server2": 12, "master": 20, "worker1": 21, "worker2": 22, "redis": 30}
HOST_SERVICE = {
    "redis": "redis",
    "lb": "lb",
    "server1": "server",
    "server2": "server",
    "master": "locust-master",
    "worker1": "locust-worker",
    "worker2": "locust-worker",
}
#: Compose services no host plays, and why. The proof is about traffic (HAProxy, the servers, Redis, Locust); a service
#: not listed here or in HOST_SERVICE makes :func:`~.compose.plan_hosts` refuse, so a new one is a decision.
NOT_IN_THE_PROOF = {
    "prometheus": "it only reads the servers' metrics and carries no chat traffic; its targets are checked "
    "instead (the proof scrapes every port deploy/prometheus.yml names on each server host)",
}
#: Docker's embedded DNS address, which haproxy.cfg names; the proof serves the same address in the lb namespace.
DOCKER_DNS = "127.0.0.11"
#: HAProxy's admin socket, as haproxy.cfg declares it (loopback of the lb host).
HAPROXY_ADMIN = ("127.0.0.1", 9999)


def host_address(host: str) -> str:
    return f"{SUBNET_PREFIX}.{HOST_OCTET[host]}"


def service_addresses() -> dict[str, list[str]]:
    """Compose service name → the namespace hosts' addresses that play it (what Docker's DNS would answer)."""
    found: dict[str, list[str]] = {}
    for host, service in HOST_SERVICE.items():
        found.setdefault(service, []).append(host_address(host))
    return found
