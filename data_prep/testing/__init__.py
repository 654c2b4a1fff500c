"""Builders for tests and benchmarks only: random MLLMs, generated videos. Never used by real runs."""
