"""The metrics endpoint as operators use it: which build answers, what the garbage collector costs, and an endpoint
that outlives the process running out of files (a server in a child process with a low open-file limit)."""

from __future__ import annotations

import gc
import platform
import re

import gevent
from gevent.socket import socket as GeventSocket

from geventchat.metrics import GCPauses, MetricsEndpoint
from geventchat.options import package_version
from geventchat.stats import ServerStats
from geventchat.testing import QUIET, ServerProcess, wait_until

from .faultkit import metric, quiet, raw_connect, read_until_closed, scrape, serving

BUILD = {
    "version": package_version(),
    "python_version": platform.python_version(),
    "gevent_version": gevent.__version__,
}


def test_build_info_names_the_package_python_and_gevent() -> None:
    with serving(quiet(metrics_port=0)) as server:
        assert server.metrics is not None
        samples = scrape(server.metrics.address)
    builds = [labels for (name, labels) in samples if name == "geventchat_build_info"]
    assert builds == [tuple(sorted(BUILD.items()))]
    assert metric(samples, "geventchat_build_info", **BUILD) == 1


def test_a_worker_endpoint_labels_its_build_info_and_gc_pauses() -> None:
    with serving(quiet(metrics_port=0)) as server:
        endpoint = MetricsEndpoint(server.stats, const_labels={"worker": "3"})
        endpoint.start()
        try:
            gc.collect()
            samples = scrape(endpoint.address)
        finally:
            endpoint.stop()
    assert metric(samples, "geventchat_build_info", worker="3", **BUILD) == 1
    assert metric(samples, "geventchat_gc_pause_seconds_count", worker="3", generation="2") >= 1


def test_collections_and_their_pauses_are_exported_per_generation() -> None:
    with serving(quiet(metrics_port=0)) as server:
        assert server.metrics is not None
        before = scrape(server.metrics.address)
        gc.collect(0)
        gc.collect()  # a full collection, the one --gc-tuning makes rare
        after = scrape(server.metrics.address)
    # prometheus_client's GC collector counts the collections...
    assert metric(after, "python_gc_collections_total", generation="2") >= (
        metric(before, "python_gc_collections_total", generation="2") + 1
    )
    assert ("python_gc_objects_collected_total", (("generation", "0"),)) in after
    # ... and ours times them.
    for generation in ("0", "2"):
        count = metric(after, "geventchat_gc_pause_seconds_count", generation=generation)
        assert count >= metric(before, "geventchat_gc_pause_seconds_count", generation=generation) + 1
        assert metric(after, "geventchat_gc_pause_seconds_bucket", generation=generation, le="+Inf") == count
        assert metric(after, "geventchat_gc_pause_seconds_sum", generation=generation) > 0
    assert metric(after, "geventchat_gc_pause_seconds_bucket", generation="2", le="1e-05") <= metric(
        after, "geventchat_gc_pause_seconds_bucket", generation="2", le="10"
    )


def test_gc_pauses_are_timed_only_between_start_and_stop() -> None:
    pauses = GCPauses()
    pauses.start()
    pauses.start()  # idempotent: one hook, so one observation per collection
    try:
        assert gc.callbacks.count(pauses._on_gc) == 1
        gc.collect(1)
    finally:
        pauses.stop()
    timed = pauses.pauses[1]
    assert timed.count == 1
    assert timed.sum > 0
    gc.collect(1)
    assert pauses._on_gc not in gc.callbacks
    assert timed.count == 1


def test_a_stopped_endpoint_leaves_no_gc_hook_behind() -> None:
    """A worker releases its endpoint on SIGHUP; the hook must go with it."""
    endpoint = MetricsEndpoint(ServerStats())
    endpoint.start()
    hook = endpoint.gc_pauses._on_gc
    assert hook in gc.callbacks
    endpoint.stop()
    assert hook not in gc.callbacks


#: EMFILE: the server's open-file limit, and how many chat connections it takes to exhaust it.
EMFILE_NOFILE = 128
EMFILE_FLOOD = 300
#: Scrapes sent while the process has no file left: they wait in the metrics listener's backlog.
PENDING_SCRAPES = 3


def _scrape_request(address: tuple[str, int]) -> GeventSocket:
    sock = raw_connect(address, timeout=30)
    sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
    return sock


def test_metrics_endpoint_survives_open_file_exhaustion_without_a_traceback() -> None:
    # A connection cap far above the fd limit, so the chat listener's clients take every file the process has.
    args = ("--max-connections", "1000", "--backlog", "1024", "--metrics-port", "0")
    with ServerProcess(*QUIET, *args, nofile=EMFILE_NOFILE) as server:
        endpoint = server.metrics_address()
        assert endpoint is not None
        baseline = scrape(endpoint)
        assert metric(baseline, "process_max_fds") == EMFILE_NOFILE
        assert metric(baseline, "geventchat_gc_frozen_objects") > 0  # --gc-tuning is on by default
        flood = [raw_connect(server.address) for _ in range(EMFILE_FLOOD)]
        wait_until(lambda: "accept failed" in server.stderr_text(), timeout=10)
        pending = [_scrape_request(endpoint) for _ in range(PENDING_SCRAPES)]
        wait_until(lambda: "metrics endpoint: accept failed" in server.stderr_text(), timeout=10)
        # Hold the exhaustion while the back-off retries (after 0.05, 0.1, 0.2, 0.4, 0.8 s ...): nothing announces
        # a retry (that is the point: one log line), so this is a fixed wait, and the recovery line's count of
        # failed accepts below proves the retries happened. Three need 0.35 s of these 2 s.
        gevent.sleep(2.0)
        for sock in flood:
            sock.close()
        # The scrapes that arrived during the exhaustion are answered once files free up ...
        answers = [read_until_closed(sock, timeout=15) for sock in pending]
        for sock in pending:
            sock.close()
        # ... and so is a new one.
        wait_until(lambda: "metrics endpoint: accepting again" in server.stderr_text(), timeout=10)
        recovered = scrape(endpoint)
        stderr = server.stderr_text()
    failed = re.search(r"metrics endpoint: accepting again after (\d+) failed accepts", stderr)
    assert failed is not None, stderr
    # The situation: the endpoint's accepts failed repeatedly for want of files.
    assert int(failed.group(1)) >= 3, stderr
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"geventchat_build_info{" in body
    assert metric(recovered, "geventchat_build_info", **BUILD) == 1
    assert stderr.count("metrics endpoint: accept failed") == 1, stderr
    assert stderr.count("metrics endpoint: accepting again after") == 1, stderr
    assert "Traceback" not in stderr, stderr[-3000:]
