"""Prove docker-compose.yml's topology without Docker: one network namespace per host, real processes.

Run as root on Linux with ``ip`` (iproute2) and ``haproxy`` installed, from the repository's virtualenv::

    sudo .venv/bin/python deploy/netns_demo.py            # prints what it saw; exit 0 when every check passed

It reads ``docker-compose.yml`` (and ``deploy/headless.env``, the headless profile) and runs each service's own
command and environment, with the service names replaced by the namespace hosts' addresses, on these hosts::

    namespace  address        runs (compose service)
    lb         10.231.0.10    haproxy -f deploy/haproxy.cfg (lb)  +  a DNS server at 127.0.0.11 ("server" → .11 .12)
    server1    10.231.0.11    geventchat serve --workers ... --proxy-protocol (server)
    server2    10.231.0.12    the same
    master     10.231.0.20    locust --master, headless (locust-master)
    worker1    10.231.0.21    locust --worker --master-host 10.231.0.20 (locust-worker)
    worker2    10.231.0.22    the same

Every host has one veth to a bridge that lives in a seventh namespace (the switch), so the test subnet exists only
inside namespaces this script created: nothing is added to the namespace it starts in. Names carry a per-run
prefix, so parallel runs do not clash, and everything (processes, namespaces, and with them the veths and the
bridge) is removed in ``finally`` and checked gone.

The proof: (1) a short headless Locust run through HAProxy ends with zero failures, both server hosts served
clients, and the servers logged the worker hosts' addresses (the PROXY protocol), not the load balancer's;
(2) a second run in which server host 1 is killed midway: HAProxy's health checks mark it DOWN and every later
connection goes to server host 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
HEADLESS_ENV = ROOT / "deploy" / "headless.env"

#: The test subnet. It exists only on the veths inside this run's namespaces.
SUBNET_PREFIX = "10.231.0"
SUBNET_BITS = 24
#: Host name → last octet; the compose service each host plays is in HOST_SERVICE.
HOST_OCTET = {"lb": 10, "server1": 11, "server2": 12, "master": 20, "worker1": 21, "worker2": 22}
HOST_SERVICE = {
    "lb": "lb",
    "server1": "server",
    "server2": "server",
    "master": "locust-master",
    "worker1": "locust-worker",
    "worker2": "locust-worker",
}
#: Docker's embedded DNS address, which haproxy.cfg names; the proof serves the same address in the lb namespace.
DOCKER_DNS = "127.0.0.11"
#: HAProxy's admin socket, as haproxy.cfg declares it (loopback of the lb host).
HAPROXY_ADMIN = ("127.0.0.1", 9999)
#: Compose variables the proof sets on top of deploy/headless.env: a short run, and per-connection server logs
#: (the DEBUG "connected" lines are where the real client addresses show).
PROOF_VARIABLES = {
    "SERVER_LOG_LEVEL": "DEBUG",
    "LOCUST_USERS": "10",
    "LOCUST_SPAWN_RATE": "10",
    "LOCUST_RUN_TIME": "4s",
    "LOCUST_EXPECT_WORKERS_MAX_WAIT": "20",
}
#: Seconds the whole proof may take before it gives up (and still tears everything down).
DEADLINE = 80
#: The failover run: users keep arriving after the kill, so there are new connections to watch.
FAILOVER_VARIABLES = {"LOCUST_USERS": "16", "LOCUST_SPAWN_RATE": "4", "LOCUST_RUN_TIME": "7s"}
#: Seconds after starting the failover run's Locust processes (and once both servers have clients) to kill server1.
FAILOVER_KILL_AFTER = 3.5
#: Arguments the proof adds to the master's compose command, only to read the results back.
PROOF_ONLY_MASTER_ARGS = ("--json-file",)


class ProofFailed(Exception):
    """A check of the proof did not hold (the message says which, with what was seen)."""


class DeadlineExceeded(ProofFailed):
    """The proof as a whole took longer than its deadline, or was asked to stop (SIGTERM)."""


class Unavailable(Exception):
    """This machine cannot run the proof (not root, no ``ip netns``, no haproxy): a reason to skip, not a failure."""


# --------------------------------------------------------------------------------- compose → commands (pure)

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
        plans[name] = ServicePlan(name, command, environment, tuple(ports), replicas, tuple(volumes))
    return plans


def host_address(host: str) -> str:
    return f"{SUBNET_PREFIX}.{HOST_OCTET[host]}"


def service_addresses() -> dict[str, list[str]]:
    """Compose service name → the namespace hosts' addresses that play it (what Docker's DNS would answer)."""
    found: dict[str, list[str]] = {}
    for host, service in HOST_SERVICE.items():
        found.setdefault(service, []).append(host_address(host))
    return found


def _replace_service_names(text: str, names: Mapping[str, str]) -> str:
    """``lb`` → ``10.231.0.10``, ``lb:8888`` → ``10.231.0.10:8888``; other strings unchanged."""
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
    replaced by host addresses (single-address services only: ``server`` is found through DNS by HAProxy)."""
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
        environment = {key: _replace_service_names(value, names) for key, value in spec.environment.items()}
        commands[host] = HostCommand(host, service, argv, environment)
    return commands


def proof_variables(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The compose variables of a proof run: deploy/headless.env, then the proof's own, then ``extra``."""
    return {**read_env_file(HEADLESS_ENV), **PROOF_VARIABLES, **extra}


# ------------------------------------------------------------------------------------------------ DNS server


def dns_answer(query: bytes, records: Mapping[str, Sequence[str]], ttl: int = 5) -> bytes | None:
    """A DNS response to ``query`` (one question): the A records of a known name, NOERROR with no answer for its
    other types, NXDOMAIN for unknown names. ``None`` for anything that is not a plain query."""
    if len(query) < 12:
        return None
    ident, flags, questions = struct.unpack_from("!HHH", query)
    if flags & 0x8000 or questions != 1:
        return None
    offset, labels = 12, []
    while True:
        if offset >= len(query):
            return None
        length = query[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0 or offset + length > len(query):
            return None
        labels.append(query[offset : offset + length])
        offset += length
    if offset + 4 > len(query):
        return None
    qtype, qclass = struct.unpack_from("!HH", query, offset)
    question = query[12 : offset + 4]
    name = b".".join(labels).decode("ascii", "replace").lower()
    addresses = records.get(name)
    answers = []
    if addresses is not None and qtype == 1 and qclass == 1:
        for address in addresses:
            answers.append(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(address))
    rcode = 0 if addresses is not None else 3
    reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode  # response; opcode and RD copied; RA; rcode
    return struct.pack("!HHHHHH", ident, reply_flags, 1, len(answers), 0, 0) + question + b"".join(answers)


def serve_dns(bind: str, records: Mapping[str, Sequence[str]]) -> None:
    """Answer DNS queries on ``bind``:53/udp forever (runs inside the lb namespace, killed at teardown)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, 53))
    print(f"dns ready on {bind}:53: {dict(records)}", flush=True)
    while True:
        query, peer = sock.recvfrom(4096)
        reply = dns_answer(query, records)
        if reply is not None:
            sock.sendto(reply, peer)


# ------------------------------------------------------------------------------------------------ namespaces


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def check_available() -> None:
    """Raise :class:`Unavailable` with the reason if this machine cannot run the proof."""
    if sys.platform != "linux":
        raise Unavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        raise Unavailable("creating network namespaces needs root")
    for tool in ("ip", "haproxy"):
        if shutil.which(tool) is None:
            raise Unavailable(f"'{tool}' is not installed (Debian: apt-get install iproute2 haproxy)")
    name = f"gcprobe{os.getpid()}{secrets.token_hex(2)}"
    probe = _ip("netns", "add", name, check=False)
    if probe.returncode != 0:
        raise Unavailable(f"'ip netns add' does not work here: {probe.stderr.strip()}")
    _ip("netns", "del", name, check=False)


@dataclass
class Process:
    host: str
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self, since: int = 0) -> str:
        """The log so far (from byte ``since``)."""
        if not self.log.exists():
            return ""
        with self.log.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0


class Lab:
    """The namespaces, the bridge and every process of one run; ``close()`` removes all of it."""

    def __init__(self, workdir: Path, log: Callable[[str], None]) -> None:
        self.prefix = f"gc{os.getpid()}{secrets.token_hex(2)}"
        self.workdir = workdir
        self.say = log
        self.namespaces: list[str] = []
        self.processes: list[Process] = []

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def build(self) -> None:
        switch = self.ns("switch")
        self._add_namespace(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for host in HOST_OCTET:
            ns = self.ns(host)
            self._add_namespace(ns)
            # Created inside the switch namespace with its peer placed straight into the host's: no interface
            # ever appears in the namespace this script runs in, so names cannot clash with anything there.
            port = f"p-{host}"
            _ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{host_address(host)}/{SUBNET_BITS}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        self.say(f"built {len(HOST_OCTET)} hosts on a bridge in namespace {switch} ({SUBNET_PREFIX}.0/{SUBNET_BITS})")

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def spawn(self, host: str, name: str, argv: Sequence[str], environment: Mapping[str, str] = {}) -> Process:
        log = self.workdir / f"{name}.log"
        # The service's environment only: a LOCUST_* variable of the caller's would change what Locust runs.
        env = {key: value for key, value in os.environ.items() if not key.startswith("LOCUST_")}
        env.update(environment)
        # The virtualenv's console scripts (geventchat, locust) first, as the image's PATH has /opt/venv/bin.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(host), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
            )
        process = Process(host, name, popen, log)
        self.processes.append(process)
        return process

    def exec_output(self, host: str, argv: Sequence[str], timeout: float = 10.0) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns(host), *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise ProofFailed(f"{argv[0]} on {host} failed: {result.stderr.strip()}")
        return result.stdout

    def kill_host(self, host: str) -> int:
        """SIGKILL every process in ``host``'s namespace (a crashed host); returns how many."""
        pids = [int(p) for p in _ip("netns", "pids", self.ns(host)).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def close(self) -> list[str]:
        """Kill every process, delete every namespace; returns what could not be removed (empty when clean)."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.popen.pid, signal.SIGKILL)
        for ns in self.namespaces:
            # Anything still inside (a child that left our process groups) dies with its host.
            listed = _ip("netns", "pids", ns, check=False)
            for pid in listed.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)
        # A process still inside a namespace would keep it (and its veths, and the bridge) alive after 'ip netns
        # del' removes the name: check each is empty first.
        inhabited = []
        for ns in self.namespaces:
            deadline = time.monotonic() + 5
            while (pids := _ip("netns", "pids", ns, check=False).stdout.split()) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pids:
                inhabited.append(f"processes {pids} in namespace {ns}")
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        return inhabited + self.leftovers()

    def leftovers(self) -> list[str]:
        left = [f"process {p.name} (pid {p.popen.pid})" for p in self.processes if p.popen.poll() is None]
        listed = _ip("netns", "list", check=False).stdout.split()
        left += [f"namespace {name}" for name in listed if name.startswith(self.prefix + "-")]
        return left


# ------------------------------------------------------------------------------------------------ the proof


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` (another process's state) until it returns something truthy; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ProofFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


_CONNECTED = re.compile(r"geventchat\.server(?:\[\d+\])?: (\d+\.\d+\.\d+\.\d+):(\d+) connected$", re.MULTILINE)
_MESSAGE = re.compile(r"geventchat\.server(?:\[\d+\])?: (\d+\.\d+\.\d+\.\d+):\d+: MessageReceived", re.MULTILINE)


@dataclass
class ServerSeen:
    """What one server host's log shows."""

    connections: dict[str, int]
    messages: dict[str, int]


def server_seen(text: str) -> ServerSeen:
    connections: dict[str, int] = {}
    for match in _CONNECTED.finditer(text):
        connections[match.group(1)] = connections.get(match.group(1), 0) + 1
    messages: dict[str, int] = {}
    for match in _MESSAGE.finditer(text):
        messages[match.group(1)] = messages.get(match.group(1), 0) + 1
    return ServerSeen(connections, messages)


class Proof:
    def __init__(self, lab: Lab, variables: Mapping[str, str], say: Callable[[str], None]) -> None:
        self.lab = lab
        self.variables = dict(variables)
        self.say = say
        self.report: dict[str, Any] = {"prefix": lab.prefix, "hosts": {h: host_address(h) for h in HOST_OCTET}}

    def commands(self, extra: Mapping[str, str] = {}, json_file: str = "locust") -> dict[str, HostCommand]:
        services = plan_services(load_compose(), {**self.variables, **extra})
        return plan_hosts(services, json_file=str(self.lab.workdir / json_file))

    # -- HAProxy

    def haproxy(self, command: str) -> str:
        script = (
            "import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5);"
            "s.sendall(sys.argv[3].encode()+b'\\n');d=b''\n"
            "while (c:=s.recv(65536)):d+=c\n"
            "sys.stdout.write(d.decode())"
        )
        host, port = HAPROXY_ADMIN
        return self.lab.exec_output("lb", [sys.executable, "-c", script, host, str(port), command])

    def backend(self) -> dict[str, dict[str, str]]:
        """The backend's servers that have an address, keyed by address: HAProxy's 'show stat' row."""
        text = self.haproxy("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["addr"].rsplit(":", 1)[0]: row
            for row in rows
            if row["pxname"] == "servers" and row["svname"] not in ("BACKEND",) and row.get("addr")
        }

    # -- steps

    def start_infrastructure(self) -> None:
        commands = self.commands()
        records = {"server": service_addresses()["server"]}
        dns = self.lab.spawn(
            "lb", "dns", [sys.executable, str(Path(__file__).resolve()), "dns", DOCKER_DNS, json.dumps(records)]
        )
        wait_for(lambda: "dns ready" in dns.text() or dns.popen.poll() is not None, 10, "the DNS server")
        if dns.popen.poll() is not None:
            raise ProofFailed(f"the DNS server exited: {dns.text()}")
        for host in ("server1", "server2"):
            command = commands[host]
            self.say(f"{host}: {' '.join(command.argv)}")
            self.lab.spawn(host, host, command.argv, command.environment)
        lb = commands["lb"]
        self.say(f"lb: {' '.join(lb.argv)}")
        haproxy = self.lab.spawn("lb", "haproxy", lb.argv, lb.environment)
        for process in self.lab.processes:
            if process.name.startswith("server"):
                wait_for(lambda p=process: "listening on" in p.text() or p.popen.poll() is not None, 20, process.name)  # type: ignore[misc]
                if process.popen.poll() is not None:
                    raise ProofFailed(f"{process.name} exited: {process.text()[-2000:]}")
        servers = service_addresses()["server"]

        def all_up() -> bool:
            if haproxy.popen.poll() is not None:
                raise ProofFailed(f"haproxy exited: {haproxy.text()[-2000:]}")
            try:
                backend = self.backend()
            except ProofFailed:
                return False  # HAProxy not listening on its admin socket yet
            return all(backend.get(a, {}).get("status") == "UP" for a in servers)

        wait_for(all_up, 20, "HAProxy to find both servers through DNS and mark them UP")
        self.say(f"HAProxy found {', '.join(servers)} through DNS ('server-template' + 'resolvers'); both UP")

    def run_locust(
        self, label: str, extra: Mapping[str, str], during: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        json_name = f"locust-{label}"  # Locust adds ".json"
        commands = self.commands(extra, json_name)
        master_command = commands["master"]
        self.say(f"master: {' '.join(master_command.argv)}  (env {_locust_env(master_command.environment)})")
        master = self.lab.spawn("master", f"master-{label}", master_command.argv, master_command.environment)
        workers = [
            self.lab.spawn(h, f"{h}-{label}", commands[h].argv, commands[h].environment) for h in ("worker1", "worker2")
        ]
        self.say(f"worker1, worker2: {' '.join(commands['worker1'].argv)}")
        if during is not None:
            during()
        run_time = _seconds(extra.get("LOCUST_RUN_TIME") or self.variables["LOCUST_RUN_TIME"])
        try:
            code = master.popen.wait(timeout=run_time + 30)
        except subprocess.TimeoutExpired:
            raise ProofFailed(f"the Locust master did not finish ({label}): {master.text()[-2000:]}") from None
        for worker in workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.popen.wait(timeout=10)
        path = self.lab.workdir / f"{json_name}.json"
        if not path.exists():
            raise ProofFailed(f"Locust wrote no results ({label}, exit {code}): {master.text()[-2000:]}")
        stats = json.loads(path.read_text())
        requests = sum(entry["num_requests"] for entry in stats)
        failures = sum(entry["num_failures"] for entry in stats)
        by_name = {entry["name"]: [entry["num_requests"], entry["num_failures"]] for entry in stats}
        return {"exit_code": code, "requests": requests, "failures": failures, "by_name": by_name}

    def prove_balanced_and_proxied(self) -> None:
        result = self.run_locust("steady", {})
        self.report["steady"] = result
        self.say(
            f"steady run: Locust exit code {result['exit_code']}, {result['requests']} requests, "
            f"{result['failures']} failures {result['by_name']}"
        )
        if result["failures"] or result["exit_code"] != 0:
            raise ProofFailed(f"the steady run had failures: {result}")
        if result["requests"] == 0:
            raise ProofFailed("the steady run made no requests")
        workers = {host_address("worker1"), host_address("worker2")}
        lb = host_address("lb")
        per_server = {}
        for host in ("server1", "server2"):
            seen = server_seen(self.process(host).text())
            clients = {ip: n for ip, n in seen.connections.items() if ip != lb}
            per_server[host] = {
                "client_connections": clients,
                "health_checks": seen.connections.get(lb, 0),
                "messages": seen.messages,
            }
            self.say(
                f"{host}: {sum(seen.messages.values())} messages, {sum(clients.values())} client connections; "
                f"by source address: connections {clients}, messages {seen.messages}; "
                f"{seen.connections.get(lb, 0)} health checks from the lb ({lb}, PROXY LOCAL)"
            )
            if not clients:
                raise ProofFailed(f"{host} served no clients: {seen}")
            if set(clients) - workers or set(seen.messages) - workers:
                raise ProofFailed(f"{host} saw client addresses other than the worker hosts {sorted(workers)}: {seen}")
        self.report["steady_servers"] = per_server
        self.say("both server hosts served clients, and saw them by their real (worker host) addresses")

    def process(self, name: str) -> Process:
        return next(p for p in self.lab.processes if p.name == name)

    def prove_failover(self) -> None:
        victim, survivor = host_address("server1"), host_address("server2")
        before = self.backend()
        marks = {host: self.process(host).size() for host in ("server1", "server2")}
        observed: dict[str, Any] = {}

        def kill_midway() -> None:
            base = {a: int(before[a]["stot"]) for a in (victim, survivor)}
            started = time.monotonic()

            def both_serving_for_a_while() -> bool:
                # Locust takes a second or two to start: wait for load on both, well into the 7 s run.
                now = self.backend()
                serving = all(int(now[a]["stot"]) > base[a] for a in (victim, survivor))
                return serving and time.monotonic() - started >= FAILOVER_KILL_AFTER

            wait_for(both_serving_for_a_while, 20, "the failover run to reach both servers")
            killed = self.lab.kill_host("server1")
            killed_at = time.monotonic()
            self.say(f"killed server host 1 ({victim}): SIGKILL to its {killed} processes")
            wait_for(lambda: self.backend()[victim]["status"].startswith("DOWN"), 10, "HAProxy to mark server1 DOWN")
            detected = time.monotonic() - killed_at
            at_down = self.backend()
            observed.update(
                detected_after=round(detected, 2),
                stot_at_down={a: int(at_down[a]["stot"]) for a in (victim, survivor)},
            )
            self.say(
                f"HAProxy marked {victim} DOWN {detected:.1f}s after the kill (health checks every 500 ms, fall 2)"
            )
            slot = at_down[victim]["svname"]
            self.say(f"  (HAProxy's slot for {victim} is servers/{slot}: DNS decides which slot gets which address)")
            haproxy_log = self.process("haproxy").text()
            down = [
                line
                for line in haproxy_log.splitlines()
                if f"servers/{slot} is DOWN" in line and not line.startswith("[")
            ]
            if down:
                self.say(f"  haproxy: {down[-1]}")

        result = self.run_locust("failover", FAILOVER_VARIABLES, during=kill_midway)
        after = self.backend()
        stot_end = {a: int(after[a]["stot"]) for a in (victim, survivor)}
        messages = {host: sum(server_seen(self.process(host).text(marks[host])).messages.values()) for host in marks}
        at_down = observed["stot_at_down"]
        new_to_victim = stot_end[victim] - at_down[victim]
        new_to_survivor = stot_end[survivor] - at_down[survivor]
        self.report["failover"] = {
            **result,
            **observed,
            "stot_end": stot_end,
            "new_connections_after_down": {"server1": new_to_victim, "server2": new_to_survivor},
            "victim_status_end": after[victim]["status"],
            "messages_per_server": messages,
        }
        self.say(
            f"failover run: Locust exit code {result['exit_code']}, {result['requests']} requests, "
            f"{result['failures']} failures {result['by_name']} (the clients on server1 lost their connection)"
        )
        self.say(
            f"messages per server host in the failover run: server1 {messages['server1']} (until killed), "
            f"server2 {messages['server2']}"
        )
        until_down = {a: at_down[a] - int(before[a]["stot"]) for a in (victim, survivor)}
        self.report["failover"]["new_connections_until_down"] = {
            "server1": until_down[victim],
            "server2": until_down[survivor],
        }
        redispatched = int(after[victim].get("wredis") or 0) - int(before[victim].get("wredis") or 0)
        self.report["failover"]["redispatched_from_server1"] = redispatched
        self.say(
            f"connections (HAProxy's count) in the failover run until server1 was DOWN: server1 +{until_down[victim]}, "
            f"server2 +{until_down[survivor]}; after: server1 +{new_to_victim}, server2 +{new_to_survivor}"
        )
        self.say(
            f"  of those to server1, {redispatched} were connects to the dead server (between the kill and DOWN) that "
            "HAProxy retried on server2 ('retries' + 'option redispatch'): the clients did not see them"
        )
        if new_to_victim != 0:
            raise ProofFailed(f"HAProxy still sent {new_to_victim} connections to the dead server1")
        if new_to_survivor <= 0:
            raise ProofFailed("no new connections reached server2 after server1 went DOWN")


def _locust_env(environment: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(environment.items()) if k != "LOCUST_LOCUSTFILE")


def _seconds(span: str) -> float:
    match = re.fullmatch(r"(\d+)([smh]?)", span.strip())
    if match is None:
        raise ValueError(f"cannot read the run time {span!r}")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _interrupt(signum: int, _frame: object) -> None:
    # Raised in the main thread wherever it is, so the finally clause below still tears everything down.
    what = "the proof's deadline passed" if signum == signal.SIGALRM else f"{signal.Signals(signum).name} received"
    raise DeadlineExceeded(what)


def run(
    variables: Mapping[str, str],
    *,
    keep_logs: bool = False,
    say: Callable[[str], None] = print,
    deadline: int = DEADLINE,
) -> dict[str, Any]:
    """Build, prove, tear down. Returns the report; raises :class:`ProofFailed` (after teardown) on failure."""
    check_available()
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGALRM, signal.SIGTERM)}
    signal.alarm(deadline)
    try:
        return _run(variables, keep_logs=keep_logs, say=say)
    finally:
        signal.alarm(0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(variables: Mapping[str, str], *, keep_logs: bool, say: Callable[[str], None]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="geventchat-netns-"))
    lab = Lab(workdir, say)
    proof = Proof(lab, variables, say)
    started = time.monotonic()
    failed = True
    try:
        lab.build()
        proof.start_infrastructure()
        proof.prove_balanced_and_proxied()
        proof.prove_failover()
        failed = False
    finally:
        signal.alarm(0)  # teardown runs to its end (it is bounded: 5 s per process at most)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        leftovers = lab.close()
        proof.report["seconds"] = round(time.monotonic() - started, 1)
        proof.report["leftovers"] = leftovers
        if leftovers:
            say(f"NOT CLEAN after teardown: {leftovers}")
        else:
            say(f"teardown: {len(lab.processes)} processes and {len(lab.namespaces)} namespaces removed; none left")
        if failed or keep_logs:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if leftovers:
        raise ProofFailed(f"teardown left {leftovers}")
    return proof.report


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["dns"]:
        serve_dns(args[1], json.loads(args[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--locustfile", help="Locust file to run instead of the compose default (LOCUSTFILE)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log (kept anyway on failure)")
    parser.add_argument("--report", metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument(
        "--deadline",
        type=int,
        default=DEADLINE,
        help="seconds before giving up (teardown still runs); default %(default)s",
    )
    options = parser.parse_args(args)
    extra = {"LOCUSTFILE": options.locustfile} if options.locustfile else {}
    try:
        report = run(proof_variables(extra), keep_logs=options.keep_logs, deadline=options.deadline)
    except Unavailable as exc:
        print(f"netns proof unavailable: {exc}", file=sys.stderr)
        return 77
    except ProofFailed as exc:
        print(f"PROOF FAILED: {exc}", file=sys.stderr)
        return 1
    if options.report:
        Path(options.report).write_text(json.dumps(report, indent=2))
    print(f"PROOF PASSED in {report['seconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
