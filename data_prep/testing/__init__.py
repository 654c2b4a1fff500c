"""Builders for tests and benchmarks only (random MLLMs, generated videos), never for real runs."""
