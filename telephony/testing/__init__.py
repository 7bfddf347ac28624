"""Tooling for tests, benchmarks and load tests: never imported by the server's call path."""
