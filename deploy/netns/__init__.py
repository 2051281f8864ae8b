"""Prove docker-compose.yml's topology without Docker: one network namespace per host, real processes.

Run as root on Linux with ``ip`` (iproute2), ``haproxy`` and ``redis-server`` installed, from the repository's
virtualenv::

    sudo .venv/bin/python -m deploy.netns            # from the repository; exit 0 when every check passed

It reads ``docker-compose.yml`` (and ``deploy/headless.env``, the headless profile) and runs each service's own
command and environment, with the service names replaced by the namespace hosts' addresses, on these hosts::

    namespace  address        runs (compose service)
    lb         10.231.0.10    haproxy -f deploy/haproxy.cfg (lb)  +  a DNS server at 127.0.0.11 ("server" → .11 .12)
    server1    10.231.0.11    geventchat serve --workers ... --proxy-protocol --redis redis://10.231.0.30:6379/0
    server2    10.231.0.12    the same
    redis      10.231.0.30    redis-server --save '' --appendonly no, + --protected-mode no --bind ... (redis)
    master     10.231.0.20    locust --master, headless (locust-master); the proof's chat clients
    worker1    10.231.0.21    locust --worker --master-host 10.231.0.20 (locust-worker)
    worker2    10.231.0.22    the same

Every host has one veth to a bridge that lives in a namespace of its own (the switch), so the test subnet exists only
inside namespaces this run created: nothing is added to the namespace it starts in. Names carry a per-run
prefix, so parallel runs do not clash, and everything (processes, namespaces, and with them the veths and the
bridge) is removed in ``finally`` and checked gone.

The compose file's ``prometheus`` service runs on no host (it carries no traffic; ``topology.NOT_IN_THE_PROOF``);
instead the proof scrapes every port its config names on each server host. The proof: (0) the lb service's health
check passes, and without HAPROXY_STATS_PASSWORD nothing listens on the statistics port; (1) a short headless Locust
run through HAProxy ends with zero failures, both server hosts served clients, and the servers logged the worker
hosts' addresses (the PROXY protocol), not the load balancer's; (2) chat clients through HAProxy in shared rooms:
every room line reaches every other member, some from one server host to the other (through Redis on its own host);
(3) a second run in which server host 1 is killed midway: HAProxy's health checks mark it DOWN, every later
connection goes to server host 2, and server host 2's room members are told ``(server lost)`` for server host 1's
within the presence TTL's bound.

The modules, one concern each: :mod:`.topology` (hosts and addresses), :mod:`.compose` (docker-compose.yml → the
commands, pure), :mod:`.dns` (the stand-in for Docker's DNS), :mod:`.chat` (the proof's chat clients), :mod:`.lab`
(namespaces, processes, teardown), :mod:`.proof` (the checks and :func:`~.proof.run`), ``__main__`` (the command line).
"""
