"""Part 2 of ``cache_latency.py``: the cache's lookup against an index of 1k to 100k questions.

Runs in the bench's own process with the stage's real parts: ``CacheLogic`` over ``ExactStore``
(JetStream KV on the bench's nats-server, a bucket of its own), ``SemanticIndex`` in Qdrant local
mode, the real embedder and verifier. The index is filled through ``SemanticIndex.put`` with
random unit vectors, all in ONE partition (the one the timed questions fall in), after a few real
questions learnt through ``CacheLogic.learn``. Local mode is filled in memory: its on-disk folder
holds the same in-memory collection and only adds a SQLite write to every put, which is timed
apart (``disk_put_ms``), so the searches are the same code either way.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nats
import numpy as np
from tqdm import tqdm

from contracts.v1 import AnswerAnnounced, CacheControl, ChatRequest, Final, Route, TaskEnvelope, TokenUsage
from services.cache.embedding import DIM, Embedder
from services.cache.exact_store import ExactStore
from services.cache.logic import CacheLogic, LookupPolicy
from services.cache.semantic import SemanticIndex
from services.cache.settings import CacheSettings
from services.cache.verifier import load
from services.shared.canonical import last_user_text, partition_key
from services.shared.stage import Finish

try:  # `python -m bench.cache_latency` from the repo root
    from bench import cache_common as cc
    from bench import common
except ModuleNotFoundError:  # `python bench/cache_latency.py`: bench/ itself is on the path
    import cache_common as cc  # type: ignore[no-redef]
    import common  # type: ignore[no-redef]

TENANT = "bench-scale"
#: How long the timings at one size may take (at least MIN_REPS repetitions, at most MAX_REPS).
BUDGET_S = 60.0
MIN_REPS = 3
MAX_REPS = 30
TTL_S = 3600.0
#: Real questions learnt first, and rewordings that must come back as semantic hits.
REAL = [
    ("What is the boiling point of water at sea level?", "what's the boiling point of water at sea level?"),
    ("Who wrote the novel Pride and Prejudice?", "who wrote the novel pride and prejudice?"),
    ("What is the chemical symbol for gold?", "What's the chemical symbol for gold?"),
    ("What does HTTP stand for?", "what does HTTP stand for"),
]


@dataclass
class ScaleRow:
    entries: int
    fill_s: float
    put_ms: list[float] = field(default_factory=list)
    search_ms: list[float] = field(default_factory=list)
    lookup_hit_ms: list[float] = field(default_factory=list)
    lookup_miss_ms: list[float] = field(default_factory=list)
    #: Lookups of a rewording that did not come back as a semantic hit (should be none).
    hits_lost: int = 0
    disk_put_ms: list[float] = field(default_factory=list)


def _request(question: str) -> ChatRequest:
    return ChatRequest.model_validate(cc.chat_body(question, 16))


def _envelope(question: str) -> TaskEnvelope:
    return TaskEnvelope(request_id=uuid.uuid4().hex, tenant=TENANT, request=_request(question),
                        route=Route(model=common.MODEL, tier="small"), reply_subject="bench.scale.reply",
                        itinerary=["cache", "infer"], received_at=time.time())


def _announced(question: str) -> AnswerAnnounced:
    final = Final(request_id=uuid.uuid4().hex, text=f"(an answer to: {question})", finish_reason="stop",
                  usage=TokenUsage(prompt_tokens=12, completion_tokens=8), model=common.MODEL, tier="small",
                  served_by="bench")
    return AnswerAnnounced(request_id=final.request_id, tenant=TENANT, request=_request(question),
                           control=CacheControl(), final=final)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def _timed_puts(index: SemanticIndex, partition: str, start: int, vectors: np.ndarray,
                      desc: str) -> list[float]:
    now, out = time.time(), []
    for i, vector in enumerate(tqdm(vectors, desc=desc, unit="entry", mininterval=2, leave=False)):
        key = hashlib.sha256(f"synthetic-{start + i}".encode()).hexdigest()
        t0 = time.perf_counter()
        await index.put(TENANT, partition, key, vector, question=f"synthetic question {start + i}",
                        created_at=now, expires_at=now + TTL_S)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def measure_disk_puts(folder: Path, partition: str, n: int, seed: int) -> list[float]:
    """The time of ``n`` puts into a local-mode index kept in ``folder`` (as the stage runs it)."""
    index = await SemanticIndex.open(url=None, path=folder, collection="bench_disk", dim=DIM)
    try:
        return await _timed_puts(index, partition, 0, _unit_vectors(np.random.default_rng(seed), n), "disk puts")
    finally:
        await index.close()


async def measure_scale(sizes: Sequence[int], nats_url: str, *, seed: int, bucket: str,
                        disk_dir: Path | None = None) -> list[ScaleRow]:
    settings = CacheSettings()
    common.log("part 2: loading the embedder and the verifier; opening the exact store and an index")
    embedder = Embedder(settings.embedder_dir, threads=settings.embed_threads)
    verifier = load(settings.cache_verifier_file, target=settings.cache_target_false_hit_rate)
    nc = await nats.connect(nats_url)
    index = await SemanticIndex.open(url=None, path=None, collection="bench_scale", dim=DIM)
    rows: list[ScaleRow] = []
    try:
        exact = await ExactStore.open(nc.jetstream(), max_age_s=TTL_S, bucket=bucket)
        logic = CacheLogic(exact, index, embedder, verifier,
                           LookupPolicy(default_ttl_s=TTL_S, max_ttl_s=TTL_S, candidates=settings.candidates,
                                        min_cosine=settings.min_cosine,
                                        # The whole decision, timed: not handed on before it is made.
                                        overlap=False), instance_id="bench-scale")
        for base, _ in REAL:
            reason = await logic.learn(_announced(base))
            if reason.value != "ok":
                raise RuntimeError(f"part 2: the cache declined to learn {base!r}: {reason.value}")
        partition = partition_key(TENANT, _request(REAL[0][0]))
        rewordings = [r for _, r in REAL]
        vectors = {q: embedder.embed([last_user_text(_request(q))])[0] for q in rewordings}
        disk_ms = await measure_disk_puts(disk_dir, partition, 300, seed) if disk_dir is not None else []
        rng, filled, fresh = np.random.default_rng(seed), len(REAL), 0
        for size in sizes:
            started = time.perf_counter()
            puts = await _timed_puts(index, partition, filled, _unit_vectors(rng, max(0, size - filled)),
                                     f"filling to {size:,}")
            filled = max(filled, size)
            row = ScaleRow(entries=await index.count(), fill_s=time.perf_counter() - started, put_ms=puts,
                           disk_put_ms=disk_ms if size == sizes[0] else [])
            deadline = time.monotonic() + BUDGET_S
            order = random.Random(seed)
            with tqdm(total=MAX_REPS, desc=f"timing at {size:,}", unit="rep", leave=False) as bar:
                while len(row.search_ms) < MAX_REPS and (len(row.search_ms) < MIN_REPS
                                                         or time.monotonic() < deadline):
                    question = order.choice(rewordings)
                    t0 = time.perf_counter()
                    await index.search(TENANT, partition, vectors[question], limit=settings.candidates)
                    row.search_ms.append((time.perf_counter() - t0) * 1000)
                    t0 = time.perf_counter()
                    hit = await logic.lookup(_envelope(question))
                    row.lookup_hit_ms.append((time.perf_counter() - t0) * 1000)
                    if not (isinstance(hit, Finish) and isinstance(hit.reply, Final) and hit.reply.cache is not None
                            and hit.reply.cache.outcome.value == "semantic"):
                        row.hits_lost += 1
                    fresh += 1
                    t0 = time.perf_counter()
                    await logic.lookup(_envelope(f"Name a board game for a rainy day number {fresh} in a cabin."))
                    row.lookup_miss_ms.append((time.perf_counter() - t0) * 1000)
                    bar.update()
            rows.append(row)
            common.log(f"part 2: {row.entries:,} entries: search p50 {statistics.median(row.search_ms):,.1f} ms, "
                       f"whole lookup p50 {statistics.median(row.lookup_hit_ms):,.1f} ms "
                       f"({len(row.search_ms)} repetitions)")
        await exact.purge_all()
    finally:
        await index.close()
        await nc.close()
    return rows


def scale_report(rows: Sequence[ScaleRow], target_ms: float,
                 path_ms: float) -> tuple[str, list[tuple[str, bool, str]]]:
    """Part 2's tables and findings. ``path_ms``: what a semantic hit spends outside
    ``CacheLogic.lookup`` (HTTP, bus hops), from part 1; NaN when part 1 did not run."""
    p50 = common.percentile
    body = [[f"{r.entries:,}", common.fmt(p50(r.search_ms, 50), 1), cc.interval_text(
             cc.quantile_interval(r.search_ms, 50), 1), common.fmt(max(r.search_ms), 1),
             common.fmt(p50(r.lookup_hit_ms, 50), 1), common.fmt(p50(r.lookup_miss_ms, 50), 1),
             str(len(r.search_ms)), common.fmt(p50(r.put_ms, 50), 2) if r.put_ms else "-"] for r in rows]
    lines = ["Part 2: one partition in Qdrant local mode (searched on the process's own copy, brute force)",
             common.table(["entries", "search p50 ms", "90% interval", "search max ms", "lookup hit p50 ms",
                           "lookup miss p50 ms", "reps", "put p50 ms"], body)]
    disk = next((r.disk_put_ms for r in rows if r.disk_put_ms), [])
    if disk:
        lines.append(f"a put into local mode's on-disk folder (as the stage runs it): p50 {p50(disk, 50):.1f} ms, "
                     f"p99 {p50(disk, 99):.1f} ms over {len(disk)} puts (in memory: the last column)")
    if len(rows) >= 2:
        small, large = sorted(rows, key=lambda r: r.entries)[-2:]
        per_entry = (p50(large.search_ms, 50) - p50(small.search_ms, 50)) / (large.entries - small.entries)
        lines.append(f"search time grows by {per_entry * 1000:.1f} µs per entry (between the two largest sizes)")
    path = 0.0 if math.isnan(path_ms) else path_ms
    budget = target_ms - path
    limit, how = cc.entries_within([(r.entries, p50(r.lookup_hit_ms, 50)) for r in rows], budget)
    around = (f"the path around the lookup costs ~{path:.1f} ms (part 1: an exact hit's p50 less its KV read), "
              if not math.isnan(path_ms) else "counting the lookup alone (part 1 did not run), ")
    if limit == 0:
        where = f"local mode cannot keep a semantic hit within {target_ms:g} ms at any size ({how})"
    elif math.isinf(limit):
        where = f"local mode keeps a semantic hit within {target_ms:g} ms ({how})"
    else:
        where = (f"local mode keeps a semantic hit within {target_ms:g} ms up to about {limit:,.0f} entries "
                 f"({how})")
    biggest = max(rows, key=lambda r: r.entries)
    slowest = p50(biggest.lookup_hit_ms, 50)
    lines += [f"{around}leaving {budget:.1f} ms for CacheLogic.lookup: {where}.",
              f"In local mode the stage searches its own copy of the index by brute force (one matrix product per "
              f"partition) on its event loop: at {biggest.entries:,} entries in one partition one lookup takes "
              f"{slowest:,.0f} ms, during which the replica serves nothing else (at most ~{1000 / slowest:,.2f} "
              "lookups/s); and only one replica can open a local-mode folder. Beyond the size above, or for "
              "more than one replica, run Qdrant as a server (SF_QDRANT_URL): HNSW search and the payload "
              "indexes on tenant and partition that SemanticIndex creates there."]
    lost = sum(r.hits_lost for r in rows)
    checks = [("part 2: every rewording came back as a semantic hit at every size", lost == 0,
               f"{lost} of {sum(len(r.lookup_hit_ms) for r in rows)} did not")]
    return "\n".join(lines), checks
