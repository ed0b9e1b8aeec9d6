"""Ports handed to processes before they bind them are never handed out twice."""

from __future__ import annotations

import pytest

from services.stack import free_port

pytestmark = pytest.mark.unit


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    # The kernel may offer a released port again at once; a service told that port has not bound
    # it yet (a worker's health port, then ingress's own port collided in CI).
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
