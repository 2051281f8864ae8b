"""The proof: the compose services on the lab's hosts, then two Locust runs and a chat through HAProxy.

(0) The operator's side of compose: the lb's health check passes, HAProxy's statistics page is absent without a
password, and every port Prometheus scrapes serves metrics on each server host. (1) A short headless run ends with
zero failures, both server hosts served clients, and the servers logged the worker hosts' addresses (the PROXY
protocol), not the load balancer's. Chat clients (:mod:`.chat`) in shared rooms: every room line delivered, some
between server hosts (through Redis on its own host). (2) A second run in which server host 1 is killed midway:
HAProxy's health checks mark it DOWN, every later connection goes to server host 2, and server host 2's room members
are told ``(server lost)`` for server host 1's. :func:`run` builds the lab, proves, and tears everything down
whatever happened.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compose import HostCommand, load_compose, plan_hosts, plan_services, scrape_targets
from .lab import Lab, Process, ProofFailed, check_available
from .topology import DOCKER_DNS, HAPROXY_ADMIN, HOST_OCTET, ROOT, host_address, service_addresses

#: Seconds the whole proof may take before it gives up (and still tears everything down).
DEADLINE = 80
#: The failover run: users keep arriving after the kill, so there are new connections to watch.
FAILOVER_VARIABLES = {"LOCUST_USERS": "16", "LOCUST_SPAWN_RATE": "4", "LOCUST_RUN_TIME": "7s"}
#: Seconds after starting the failover run's Locust processes (and once both servers have clients) to kill server1.
FAILOVER_KILL_AFTER = 3.5
#: The chat phase: rooms, members per room, lines each member sends (each member gets every other member's).
CHAT_ROOMS, CHAT_MEMBERS, CHAT_MESSAGES = 2, 4, 5
#: Seconds the chat clients stay connected after their exchange: through the failover run (7 s) and its notices.
CHAT_WATCH = 40
#: Seconds allowed on top of the servers' own bound (a dead server is announced at most presence_ttl * 4 / 3 after
#: its last heartbeat, and that heartbeat was before the kill) for the notice to travel Redis → server → client.
LOST_NOTICE_ALLOWANCE = 1.0


#: Run on another host: ``probe.py HOST PORT [PATH]`` prints ``refused``, or the body of GET PATH (``open`` without
#: a path). Stdlib only, bounded by its timeouts.
_PROBE = """
import socket, sys, urllib.request
host, port = sys.argv[1], int(sys.argv[2])
if len(sys.argv) > 3:
    print(urllib.request.urlopen(f"http://{host}:{port}{sys.argv[3]}", timeout=5).read().decode())
    raise SystemExit
try:
    socket.create_connection((host, port), timeout=5).close()
except ConnectionRefusedError:
    print("refused")
else:
    print("open")
"""


class DeadlineExceeded(ProofFailed):
    """The proof as a whole took longer than its deadline, or was asked to stop (SIGTERM)."""


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


def connected_ports(text: str, address: str) -> set[int]:
    """The source ports of the connections a server host's log shows from ``address``."""
    return {int(m.group(2)) for m in _CONNECTED.finditer(text) if m.group(1) == address}


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
        # Compose's start order: Redis, then the servers once its health check passes.
        redis = commands["redis"]
        self.say(f"redis: {' '.join(redis.argv)}")
        redis_process = self.lab.spawn("redis", "redis", redis.argv, redis.environment)
        redis_check = plan_services(load_compose(), self.variables)["redis"].healthcheck

        def redis_healthy() -> bool:
            if redis_process.popen.poll() is not None:
                raise ProofFailed(f"redis-server exited: {redis_process.text()[-2000:]}")
            try:
                return self.lab.exec_output("redis", redis_check).strip() == "PONG"
            except ProofFailed:
                return False

        wait_for(redis_healthy, 10, "redis-server's compose health check")
        self.say(f"redis: the compose health check passes ({' '.join(redis_check)})")
        records = {"server": service_addresses()["server"]}
        dns = self.lab.spawn(
            # The lab's processes run from the repository, so the package runs by its name there.
            "lb",
            "dns",
            [sys.executable, "-m", "deploy.netns", "dns", DOCKER_DNS, json.dumps(records)],
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

    def prove_operations(self) -> None:
        """What the compose file promises an operator, on the lab: the lb service's health check passes once the
        servers are UP; without HAPROXY_STATS_PASSWORD nothing listens on the statistics port; every port Prometheus
        scrapes (the prometheus service's config) serves geventchat's metrics on each server host."""
        services = plan_services(load_compose(), self.variables)
        check = services["lb"].healthcheck
        if not check:
            raise ProofFailed("the lb service has no health check in docker-compose.yml")
        self.lab.exec_output("lb", check)  # a non-zero exit raises ProofFailed with its stderr
        self.say(f"lb: the compose health check passes ({' '.join(check[:2])} ...: admin socket, backend UP)")
        if services["lb"].environment.get("HAPROXY_STATS_PASSWORD"):
            raise ProofFailed("the proof checks the statistics page without a password, but one is set")
        stats = re.search(
            r"^frontend stats\n(?:.*\n)*?\s+bind :(\d+)", (ROOT / "deploy" / "haproxy.cfg").read_text(), re.M
        )
        if stats is None:
            raise ProofFailed("deploy/haproxy.cfg has no statistics frontend to check")
        answer = self._probe(host_address("lb"), int(stats.group(1)))
        if answer != "refused":
            raise ProofFailed(f"HAProxy's statistics port {stats.group(1)} is {answer} without a password")
        self.say(f"lb: no HAPROXY_STATS_PASSWORD, so nothing listens on the statistics port {stats.group(1)}")
        targets = scrape_targets(services)
        if not targets:
            raise ProofFailed("the Prometheus config scrapes nothing")
        for name, port in targets:
            for address in service_addresses()[name]:
                body = self._probe(address, port, "/metrics")
                if "geventchat_connections " not in body:
                    raise ProofFailed(f"{address}:{port}/metrics has no geventchat_connections: {body[:200]!r}")
        ports = sorted({port for _, port in targets})
        self.report["operations"] = {"lb_healthcheck": "passed", "stats_port": answer, "metrics_ports": ports}
        self.say(f"Prometheus's targets answer: ports {ports} on every server host serve geventchat metrics")

    def _probe(self, address: str, port: int, path: str = "") -> str:
        # From the master host: another machine on the network, as the Prometheus container is.
        argv = [sys.executable, "-c", _PROBE, address, str(port), *([path] if path else [])]
        return self.lab.exec_output("master", argv).strip()

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

    # -- chat

    def chat_events(self, kind: str) -> list[dict[str, Any]]:
        """The chat clients' JSON lines of ``kind`` so far; raises if they failed or exited without a word."""
        events = [json.loads(line) for line in self.process("chat").text().splitlines() if line.startswith("{")]
        failed = [e for e in events if e["event"] == "failed"]
        if failed:
            raise ProofFailed(f"the chat clients failed: {failed[0]['error']}")
        return [e for e in events if e["event"] == kind]

    def prove_chat(self) -> None:
        """Chat clients through HAProxy join shared rooms and talk: every line reaches every other member of its
        room (none lost), and some went from a client on one server host to a client on the other (through Redis).
        Where each client landed: the server hosts log each connection's source address and port (the PROXY
        protocol gives them the client's own), and the clients report their local ports."""
        port = plan_services(load_compose(), self.variables)["lb"].ports[0]
        argv = [sys.executable, "-m", "deploy.netns", "chat", host_address("lb"), str(port)]
        argv += [str(n) for n in (CHAT_ROOMS, CHAT_MEMBERS, CHAT_MESSAGES, CHAT_WATCH)]
        self.say(f"master: chat clients: {' '.join(argv[1:])}")
        chat = self.lab.spawn("master", "chat", argv)

        def delivered() -> list[dict[str, Any]]:
            found = self.chat_events("delivered")
            if not found and chat.popen.poll() is not None:
                raise ProofFailed(f"the chat clients exited: {chat.text()[-2000:]}")
            return found

        (result,) = wait_for(delivered, 30, "the chat clients' exchange")
        client_address = host_address("master")
        ports = {host: connected_ports(self.process(host).text(), client_address) for host in ("server1", "server2")}
        self.chat_hosts: dict[int, str] = {}
        for client in result["clients"]:
            hosts = [h for h, seen in ports.items() if client["port"] in seen]
            if len(hosts) != 1:
                who = f"chat client pc{client['index']} (port {client['port']})"
                raise ProofFailed(f"server hosts {hosts} logged {who}")
            self.chat_hosts[client["index"]] = hosts[0]
        self.chat_rooms: dict[int, int] = {c["index"]: c["room"] for c in result["clients"]}
        expected = sorted(
            [sender, receiver]
            for receiver, room in self.chat_rooms.items()
            for sender, other in self.chat_rooms.items()
            if other == room and sender != receiver
            for _ in range(CHAT_MESSAGES)
        )
        deliveries = result["deliveries"]
        cross = sum(1 for sender, receiver in deliveries if self.chat_hosts[sender] != self.chat_hosts[receiver])
        per_host = {h: sorted(i for i, where in self.chat_hosts.items() if where == h) for h in ("server1", "server2")}
        chat_report = self.report["chat"] = {
            "clients_per_host": {h: len(members) for h, members in per_host.items()},
            "expected": len(expected),
            "delivered": len(deliveries),
            "cross_host": cross,
            "exact": sorted(deliveries) == expected,
        }
        self.say(
            f"chat: {len(self.chat_rooms)} clients in {CHAT_ROOMS} rooms, on server1 {per_host['server1']}, on "
            f"server2 {per_host['server2']}; {len(deliveries)} of {len(expected)} room lines delivered, {cross} of "
            "them from a client on one server host to a client on the other (through Redis)"
        )
        if not chat_report["exact"]:
            raise ProofFailed(f"room lines lost or duplicated: {len(deliveries)} delivered of {len(expected)}")
        if cross <= 0:
            raise ProofFailed(f"no room line crossed server hosts (clients per host {per_host})")

    def prove_server_lost(self, killed_at: float) -> None:
        """Server host 2's chat clients get ``info: NICK left #ROOM (server lost)`` for every member of their room
        that was on server host 1, within the presence TTL's bound after the kill."""
        ttl = float(self.variables["SERVER_PRESENCE_TTL"])
        bound = ttl * 4 / 3 + LOST_NOTICE_ALLOWANCE
        expected = {
            (receiver, f"pc{victim}")
            for receiver, host in self.chat_hosts.items()
            if host == "server2"
            for victim, where in self.chat_hosts.items()
            if where == "server1" and self.chat_rooms[victim] == self.chat_rooms[receiver]
        }
        if not expected:
            raise ProofFailed("no room had members on both server hosts: nothing to announce")

        def all_notices() -> list[dict[str, Any]]:
            events = self.chat_events("lost")
            return events if expected <= {(e["receiver"], e["nick"]) for e in events} else []

        wait_for(all_notices, max(0.5, killed_at + bound + 2 - time.monotonic()), "the '(server lost)' notices")
        notices = self.chat_events("lost")
        received = {(e["receiver"], e["nick"]) for e in notices}
        latest = max(e["at"] - killed_at for e in notices)
        self.report["server_lost"] = {
            "expected": len(expected),
            "received": len(received & expected),
            "unexpected": len(received - expected),
            "presence_ttl": ttl,
            "latest_after_kill": round(latest, 2),
            "bound": round(bound, 2),
        }
        self.say(
            f"server lost: server2's chat clients got all {len(expected)} '(server lost)' notices for server1's "
            f"members, the last {latest:.2f}s after the kill (presence TTL {ttl:g}s; bound ttl * 4/3 + "
            f"{LOST_NOTICE_ALLOWANCE:g}s = {bound:.2f}s)"
        )
        if received - expected:
            raise ProofFailed(f"'(server lost)' notices nobody should get: {sorted(received - expected)}")
        if latest > bound:
            raise ProofFailed(f"the last '(server lost)' notice came {latest:.2f}s after the kill, past {bound:.2f}s")

    def process(self, name: str) -> Process:
        return next(p for p in self.lab.processes if p.name == name)

    def prove_failover(self) -> None:
        before = self.backend()
        marks = {host: self.process(host).size() for host in ("server1", "server2")}
        observed: dict[str, Any] = {}
        result = self.run_locust(
            "failover", FAILOVER_VARIABLES, during=lambda: observed.update(self._kill_server1_midway(before))
        )
        failover = self.report["failover"] = self._failover_report(result, before, observed, marks)
        self.prove_server_lost(self._killed_at)
        new_to_victim, new_to_survivor = failover["new_connections_after_down"].values()
        if new_to_victim != 0:
            raise ProofFailed(f"HAProxy still sent {new_to_victim} connections to the dead server1")
        if new_to_survivor <= 0:
            raise ProofFailed("no new connections reached server2 after server1 went DOWN")

    def _kill_server1_midway(self, before: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
        """Once both servers have had load for a while, SIGKILL server host 1 and wait for HAProxy to mark it DOWN;
        returns how long that took and HAProxy's connection counts at that moment."""
        victim, survivor = host_address("server1"), host_address("server2")
        base = {a: int(before[a]["stot"]) for a in (victim, survivor)}
        started = time.monotonic()

        def both_serving_for_a_while() -> bool:
            # Locust takes a second or two to start: wait for load on both, well into the 7 s run.
            now = self.backend()
            serving = all(int(now[a]["stot"]) > base[a] for a in (victim, survivor))
            return serving and time.monotonic() - started >= FAILOVER_KILL_AFTER

        wait_for(both_serving_for_a_while, 20, "the failover run to reach both servers")
        killed = self.lab.kill_host("server1")
        killed_at = self._killed_at = time.monotonic()
        self.say(f"killed server host 1 ({victim}): SIGKILL to its {killed} processes")
        wait_for(lambda: self.backend()[victim]["status"].startswith("DOWN"), 10, "HAProxy to mark server1 DOWN")
        detected = time.monotonic() - killed_at
        at_down = self.backend()
        self.say(f"HAProxy marked {victim} DOWN {detected:.1f}s after the kill (health checks every 500 ms, fall 2)")
        slot = at_down[victim]["svname"]
        self.say(f"  (HAProxy's slot for {victim} is servers/{slot}: DNS decides which slot gets which address)")
        haproxy_log = self.process("haproxy").text()
        down = [
            line for line in haproxy_log.splitlines() if f"servers/{slot} is DOWN" in line and not line.startswith("[")
        ]
        if down:
            self.say(f"  haproxy: {down[-1]}")
        return {
            "detected_after": round(detected, 2),
            "stot_at_down": {a: int(at_down[a]["stot"]) for a in (victim, survivor)},
        }

    def _failover_report(
        self,
        result: Mapping[str, Any],
        before: Mapping[str, Mapping[str, str]],
        observed: Mapping[str, Any],
        marks: Mapping[str, int],
    ) -> dict[str, Any]:
        """The failover run's figures: connections per server (HAProxy's count) until and after server1 was DOWN,
        the connects HAProxy redispatched, messages per server host (their logs since ``marks``)."""
        victim, survivor = host_address("server1"), host_address("server2")
        after = self.backend()
        stot_end = {a: int(after[a]["stot"]) for a in (victim, survivor)}
        messages = {host: sum(server_seen(self.process(host).text(marks[host])).messages.values()) for host in marks}
        at_down = observed["stot_at_down"]
        new_to_victim = stot_end[victim] - at_down[victim]
        new_to_survivor = stot_end[survivor] - at_down[survivor]
        until_down = {a: at_down[a] - int(before[a]["stot"]) for a in (victim, survivor)}
        redispatched = int(after[victim].get("wredis") or 0) - int(before[victim].get("wredis") or 0)
        self.say(
            f"failover run: Locust exit code {result['exit_code']}, {result['requests']} requests, "
            f"{result['failures']} failures {result['by_name']} (the clients on server1 lost their connection)"
        )
        self.say(
            f"messages per server host in the failover run: server1 {messages['server1']} (until killed), "
            f"server2 {messages['server2']}"
        )
        self.say(
            f"connections (HAProxy's count) in the failover run until server1 was DOWN: server1 +{until_down[victim]}, "
            f"server2 +{until_down[survivor]}; after: server1 +{new_to_victim}, server2 +{new_to_survivor}"
        )
        self.say(
            f"  of those to server1, {redispatched} were connects to the dead server (between the kill and DOWN) that "
            "HAProxy retried on server2 ('retries' + 'option redispatch'): the clients did not see them"
        )
        return {
            **result,
            **observed,
            "stot_end": stot_end,
            "new_connections_after_down": {"server1": new_to_victim, "server2": new_to_survivor},
            "victim_status_end": after[victim]["status"],
            "messages_per_server": messages,
            "new_connections_until_down": {"server1": until_down[victim], "server2": until_down[survivor]},
            "redispatched_from_server1": redispatched,
        }


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
        proof.prove_operations()
        proof.prove_balanced_and_proxied()
        proof.prove_chat()
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
