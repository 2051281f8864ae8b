"""Benchmarks: reference servers, a uvloop load generator, the runner that writes the report, and the Locust
benchmarks (``bench_locust.py``, ``bench_idle.py``) that measure the load tester itself."""
