"""``skinflint route FILE``: the classifier's decision on each prompt of a file, offline.

Exactly the service's code: the tiers file and settings the service reads (``SF_TIERS_FILE``,
``SF_EMBEDDER_DIR``), ``build_router`` and ``ClassifierLogic``, one line at a time. A line is
``{"prompt": "..."}`` or ``{"messages": [...]}`` (a chat conversation); a line that is neither is
reported by its number and skipped, never guessed at.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from contracts.v1 import ChatRequest, Route, RouteDecision, TaskEnvelope
from services.cache.embedding import Embedder, EmbedderMissing
from services.classifier.logic import ClassifierLogic
from services.classifier.router import PolicyMissing, build_router
from services.classifier.settings import ClassifierSettings
from services.shared.settings import ConfigError, load_settings
from services.shared.tiers import load_tiers
from services.shared.validation import summary


def parse_line(number: int, line: str, model: str) -> ChatRequest:
    """One line as the chat request the classifier would see; ``ValueError`` names what is wrong."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {number}: not JSON ({exc.msg})") from exc
    if not isinstance(raw, dict) or not ("prompt" in raw or "messages" in raw):
        raise ValueError(f'line {number}: expected {{"prompt": ...}} or {{"messages": [...]}}')
    messages = raw.get("messages") or [{"role": "user", "content": raw.get("prompt")}]
    try:
        return ChatRequest.model_validate({"model": model, "messages": messages})
    except ValidationError as exc:
        raise ValueError(f"line {number}: {summary(exc, limit=1)}") from exc


async def _decide(logic: ClassifierLogic, number: int, request: ChatRequest, route: Route) -> RouteDecision:
    env = TaskEnvelope(request_id=f"line-{number}", tenant="offline", request=request, route=route,
                       reply_subject="", itinerary=["classifier"], received_at=0.0)
    decided = (await logic.route(env)).env.route.decision
    assert decided is not None  # a routed task always gets one
    return decided


def route_file(path: Path, *, tenant_class: str | None = None, min_tier: str | None = None,
               as_json: bool = False) -> int:
    """Decide every line of ``path``; print a table (or JSON lines) and the share per tier.
    Returns the exit code: 0, 1 when some lines could not be read, 2 for a configuration error."""
    err = Console(stderr=True)
    try:
        settings = load_settings(ClassifierSettings)
        tiers = load_tiers(settings.tiers_file)
        if tiers.routing is None:
            raise ConfigError(f"{settings.tiers_file}: routing: missing; nothing decides a tier")
        router = build_router(tiers.routing)
        embedder = Embedder(settings.embedder_dir, threads=settings.embed_threads) \
            if router.live.scorer.needs_embedding() or any(c.scorer.needs_embedding() for c in router.shadows) \
            else None
    except (ConfigError, PolicyMissing, EmbedderMissing) as exc:
        err.print(f"[red]{exc}[/red]")
        return 2
    routing = tiers.routing
    if min_tier is not None and min_tier not in (routing.weak, routing.strong):
        err.print(f"[red]--min-tier: {min_tier!r} is not a routed tier ({routing.weak}, {routing.strong})[/red]")
        return 2
    logic = ClassifierLogic(router, embedder)
    route = Route(model=routing.auto_model, tier=routing.default_tier, counterfactual_tier=routing.default_tier,
                  routed=True, min_tier=min_tier, tenant_class=tenant_class)
    lines = path.read_text().splitlines()
    rows: list[tuple[int, str, RouteDecision]] = []
    bad = 0

    async def run() -> None:
        nonlocal bad
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task("routing", total=len(lines))
            for number, line in enumerate(lines, start=1):
                progress.advance(task)
                if not line.strip():
                    continue
                try:
                    request = parse_line(number, line, routing.auto_model)
                except ValueError as exc:
                    err.print(f"[yellow]{exc}[/yellow]")
                    bad += 1
                    continue
                rows.append((number, request.messages[-1].content, await _decide(logic, number, request, route)))

    asyncio.run(run())
    _print(rows, as_json)
    counts = Counter(decision.tier for _, _, decision in rows)
    shares = ", ".join(f"{tier} {n} ({n / max(1, len(rows)):.0%})" for tier, n in sorted(counts.items()))
    err.print(f"{len(rows)} prompts routed: {shares or 'none'}; policy {router.live.name}, "
              f"threshold {router.live.threshold:.3f}" + (f"; {bad} lines skipped" if bad else ""))
    return 1 if bad else 0


def _print(rows: list[tuple[int, str, RouteDecision]], as_json: bool) -> None:
    if as_json:
        for number, _, decision in rows:
            out: dict[str, Any] = {"line": number, **decision.model_dump(exclude={"cascade"})}
            sys.stdout.write(json.dumps(out) + "\n")
        return
    table = Table("line", "tier", "score", "policy", "prompt")
    for number, prompt, decision in rows:
        score = "" if decision.score is None else f"{decision.score:.3f}"
        shown = " ".join(prompt.split())
        table.add_row(str(number), decision.tier, score, decision.policy, shown[:70] + ("…" if len(shown) > 70 else ""))
    Console().print(table)
