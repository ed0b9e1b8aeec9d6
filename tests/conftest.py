"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.natsd import NatsServer, start_nats_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A real nats-server with JetStream, on a free port, for the whole session."""
    server = start_nats_server()
    yield server
    server.stop()


@pytest.fixture
def fresh_nats_server() -> Iterator[NatsServer]:
    """A nats-server of the test's own, for tests that need an empty JetStream."""
    server = start_nats_server()
    yield server
    server.stop()
