"""The namespace lab: one network namespace per host on a bridge in a namespace of its own, the processes run in
them, and a teardown that removes all of it and says what, if anything, is left."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .topology import HOST_OCTET, ROOT, SUBNET_BITS, SUBNET_PREFIX, host_address


class ProofFailed(Exception):
    """A check of the proof did not hold (the message says which, with what was seen)."""


class Unavailable(Exception):
    """This machine cannot run the proof (not root, no ``ip netns``, no haproxy or redis-server): a reason to skip,
    not a failure."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def check_available() -> None:
    """Raise :class:`Unavailable` with the reason if this machine cannot run the proof."""
    if sys.platform != "linux":
        raise Unavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        raise Unavailable("creating network namespaces needs root")
    for tool in ("ip", "haproxy", "redis-server"):
        if shutil.which(tool) is None:
            raise Unavailable(f"'{tool}' is not installed (Debian: apt-get install iproute2 haproxy redis-server)")
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
