"""The routing slip: how a task envelope moves from stage to stage.

Plain functions decide where an envelope goes; ``StageHop`` performs the hand-off over NATS as
a request (on the request path's lane, ``services.shared.lane``), so that the sender learns at
once whether anybody took the task (NATS answers "no responders" when no replica of the next
stage is subscribed).
"""

from __future__ import annotations

import asyncio
import logging
import time

from faststream.nats import NatsBroker
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from contracts.subjects import INFER_STAGE, infer_subject, stage_subject
from contracts.v1 import HopAck, StageMark, TaskEnvelope
from services.shared.errors import SkinflintError, Timeout, Unavailable
from services.shared.lane import request_hop

log = logging.getLogger(__name__)


def current_stage(env: TaskEnvelope) -> str | None:
    return env.itinerary[0] if env.itinerary else None


def subject_for(env: TaskEnvelope) -> str:
    """The subject of the stage at the head of the itinerary."""
    stage = current_stage(env)
    if stage is None:
        raise ValueError(f"task {env.request_id} has an empty itinerary: nowhere to send it")
    if stage == INFER_STAGE:
        return infer_subject(env.route.tier, env.priority)
    return stage_subject(stage)


def advance(env: TaskEnvelope) -> TaskEnvelope:
    """The envelope as the next stage should receive it: the current stage is done."""
    return env.model_copy(update={"itinerary": env.itinerary[1:]})


def insert_next(env: TaskEnvelope, *stages: str) -> TaskEnvelope:
    """Visit ``stages`` right after the current one (e.g. retrieval deciding it needs a rerank)."""
    head, rest = env.itinerary[:1], env.itinerary[1:]
    return env.model_copy(update={"itinerary": [*head, *stages, *rest]})


def skip(env: TaskEnvelope, stage: str) -> TaskEnvelope:
    """Drop a later stage from the slip (e.g. the cache answered, no inference needed)."""
    head, rest = env.itinerary[:1], env.itinerary[1:]
    return env.model_copy(update={"itinerary": [*head, *(s for s in rest if s != stage)]})


def mark_arrival(env: TaskEnvelope, stage: str, instance: str) -> None:
    env.marks.append(StageMark(stage=stage, instance=instance, arrived_at=time.time()))


class StageHop:
    """Hands envelopes to the next stage and waits for its acknowledgement.

    A replica that is full answers ``accepted=False, retry=True``; the hop then asks again (the
    queue group picks a replica at random) a bounded number of times before giving up.
    """

    def __init__(self, broker: NatsBroker, *, ack_timeout_s: float = 5.0, busy_retries: int = 8,
                 busy_backoff_s: float = 0.05) -> None:
        self._broker = broker
        self._ack_timeout_s = ack_timeout_s
        self._busy_retries = busy_retries
        self._busy_backoff_s = busy_backoff_s

    async def send(self, env: TaskEnvelope) -> HopAck:
        """Deliver ``env`` to the stage at the head of its itinerary.

        Raises ``Unavailable`` when no replica of that stage runs or all stay full, ``Timeout``
        when none answers in time, and the stage's own error when it refuses for good.
        """
        stage = current_stage(env) or "?"
        subject = subject_for(env)
        for attempt in range(self._busy_retries + 1):
            try:
                ack = await request_hop(self._broker.connection, subject, env, self._ack_timeout_s)
            except NoRespondersError as exc:
                raise Unavailable(
                    f"no {stage!r} service is running for subject {subject}; start one and retry"
                ) from exc
            except (NatsTimeoutError, TimeoutError) as exc:
                raise Timeout(f"the {stage!r} stage did not take the task within "
                              f"{self._ack_timeout_s:.1f} s") from exc
            if ack.accepted:
                return ack
            if not ack.retry:
                raise SkinflintError(ack.reason or f"the {stage!r} stage refused the task", status=400,
                                     code="rejected")
            await asyncio.sleep(self._busy_backoff_s * (attempt + 1))
        raise Unavailable(f"every {stage!r} replica is at capacity; retry shortly", code="overloaded")
