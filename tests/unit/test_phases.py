"""Where skinflint's own time goes: the phases the ingress reports from the marks on a path."""

from __future__ import annotations

import pytest

from contracts.v1 import PathTimings
from services.ingress.dispatch import PHASES, phases_ms

pytestmark = pytest.mark.unit


def test_every_phase_is_the_gap_between_its_two_marks() -> None:
    timings = PathTimings(handed_off_at=100.001, arrived_at=100.002, engine_started_at=100.0025,
                          engine_finished_at=100.5025, sent_at=100.5027, received_at=100.5037)
    spans = phases_ms(timings, request_at=100.0005, response_at=100.504)
    assert list(spans) == [name for name, _, _ in PHASES]
    assert spans == pytest.approx({"ingress_in": 0.5, "to_worker": 1.0, "worker_in": 0.5, "worker_out": 0.2,
                                   "to_ingress": 1.0, "ingress_out": 0.3}, abs=1e-6)
    # Everything but the engine's half second.
    assert sum(spans.values()) == pytest.approx(503.5 - 500, abs=1e-6)


def test_phases_whose_marks_are_missing_are_left_out() -> None:
    # An answer from a stage that is not a worker (or an older worker) carries no worker marks.
    spans = phases_ms(PathTimings(handed_off_at=10.001, received_at=10.004), request_at=10.0, response_at=10.005)
    assert spans == pytest.approx({"ingress_in": 1.0, "ingress_out": 1.0}, abs=1e-6)
    assert phases_ms(None, request_at=10.0, response_at=10.002) == {}
