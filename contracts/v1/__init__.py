"""Version 1 of the wire contracts. Within v1 fields may only be added, optional, with defaults."""

from contracts.v1.batch import BatchStart, BulkEnd, BulkError, BulkLine, BulkOutputLine, BulkResponse, bus_batch_id
from contracts.v1.cache import CacheControl, CacheMode, CacheNote, CacheOutcome
from contracts.v1.chat import ChatMessage, ChatRequest, JsonSchemaFormat, ResponseFormat, StreamOptions, WireModel
from contracts.v1.envelope import Route, RouteDecision, ShadowPick, StageMark, TaskEnvelope
from contracts.v1.events import (
    AnswerAnnounced,
    CachePurge,
    CachePurged,
    CacheVerdict,
    CancelRequest,
    HopAck,
    UsageEvent,
    UsageQuery,
    UsageReport,
    UsageRow,
    WorkerHeartbeat,
)
from contracts.v1.replies import REPLY_ADAPTER, Accepted, Chunk, ErrorReply, Final, PathTimings, Reply, TokenUsage

__all__ = [
    "REPLY_ADAPTER",
    "Accepted",
    "AnswerAnnounced",
    "BatchStart",
    "BulkEnd",
    "BulkError",
    "BulkLine",
    "BulkOutputLine",
    "BulkResponse",
    "CacheControl",
    "CacheMode",
    "CacheNote",
    "CacheOutcome",
    "CachePurge",
    "CachePurged",
    "CacheVerdict",
    "CancelRequest",
    "ChatMessage",
    "ChatRequest",
    "Chunk",
    "ErrorReply",
    "Final",
    "HopAck",
    "JsonSchemaFormat",
    "PathTimings",
    "Reply",
    "ResponseFormat",
    "Route",
    "RouteDecision",
    "ShadowPick",
    "StageMark",
    "StreamOptions",
    "TaskEnvelope",
    "TokenUsage",
    "UsageEvent",
    "UsageQuery",
    "UsageReport",
    "UsageRow",
    "WireModel",
    "WorkerHeartbeat",
    "bus_batch_id",
]
