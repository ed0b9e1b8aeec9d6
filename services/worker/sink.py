"""The worker's replies, usage events and cache announcements onto the bus (``ReplySink``'s adapter)."""

from __future__ import annotations

import logging

from faststream.nats import NatsBroker

from contracts.subjects import BULK_RESULTS_STREAM, CACHE_FILL_SUBJECT, INFER_STAGE, Priority
from contracts.v1 import Accepted, AnswerAnnounced, Chunk, ErrorReply, Final, TaskEnvelope, UsageEvent
from services.shared import lane, metrics
from services.shared.usage import UsagePublisher

log = logging.getLogger(__name__)


class BusSink:
    """Replies and usage events onto the bus. Bulk results and usage go to JetStream with a
    message id, so a redelivered task that is answered twice is stored and charged once.

    Interactive replies take the request path's lane; usage events go out through the
    ``UsagePublisher``, ahead of the reply they charge (a bulk task still waits until its event
    is stored: it is acknowledged only after that)."""

    def __init__(self, broker: NatsBroker, usage_ack_timeout_s: float) -> None:
        self._broker = broker
        self.usage_publisher = UsagePublisher(broker, usage_ack_timeout_s)

    async def reply(self, env: TaskEnvelope, message: Accepted | Chunk | Final | ErrorReply) -> None:
        if env.priority is Priority.BULK:
            if isinstance(message, Chunk | Accepted):
                return  # bulk results are stored whole
            await self._broker.publish(
                message, env.reply_subject, stream=BULK_RESULTS_STREAM.name,
                headers={"Nats-Msg-Id": f"result-{env.request_id}"},
            )
        else:
            await lane.publish(self._broker.connection, env.reply_subject, message)

    async def usage(self, event: UsageEvent) -> None:
        metrics.observe_usage(event, INFER_STAGE)
        await self.usage_publisher.publish(event, wait_stored=event.priority is Priority.BULK)

    async def announce(self, env: TaskEnvelope, final: Final) -> None:
        """Core NATS, fire and forget: a lost announcement costs a future hit, nothing else."""
        message = AnswerAnnounced(request_id=env.request_id, tenant=env.tenant, request=env.request,
                                  control=env.cache_control, embedding=env.query_embedding, final=final)
        try:
            await self._broker.connection.publish(CACHE_FILL_SUBJECT, message.model_dump_json().encode())
        except Exception:
            log.warning("could not announce the answer to %s to the cache", env.request_id, exc_info=True)
