"""Benchmarks (not part of the default test run): `./run bench`."""
