"""Fake external services used by tests, benchmarks and the local stack (`make up`)."""

from fakes.openai_upstream import FakeUpstream, spawn_process, stop_process

__all__ = ["FakeUpstream", "spawn_process", "stop_process"]
