"""Benchmarks: reference servers, a uvloop load generator, and the runner that writes the report."""
