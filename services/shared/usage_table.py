"""Usage reports as plain-text tables a person reads: totals, savings by lever, shadow policies."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from contracts.v1 import UsageReport, UsageRow
from contracts.v1.events import ShadowPolicyRow

COLUMNS = ("tenant", "tier", "requests", "prompt", "cached", "completion", "cost $", "counterfactual $", "saved")
LEVER_COLUMNS = ("tenant", "tier", "cache hits", "cache $", "routed", "routing $", "fallbacks", "fallback $",
                 "prefix $", "bulk $", "escalated", "cascade $")
#: Shown only when some rows predate the split (ledger revision < 0003): their saving in no lever.
UNSPLIT_COLUMN = "unsplit $"
SHADOW_COLUMNS = ("policy", "requests", "agreed", "its picks", "live picks", "its cost $", "live cost $", "change")


def render_table(report: UsageReport) -> str:
    if not report.rows:
        return "no usage recorded yet\n"
    out = [_table(COLUMNS, [_totals(r) for r in report.rows], text_columns=2)]
    levers: list[tuple[str, ...]] = [_levers(r) for r in report.rows]
    header: tuple[str, ...] = LEVER_COLUMNS
    if any(unsplit != 0 for unsplit in (_unsplit(r) for r in report.rows)):
        header = (*LEVER_COLUMNS, UNSPLIT_COLUMN)
        levers = [(*row, _usd(_unsplit(r))) for row, r in zip(levers, report.rows, strict=True)]
    out += ["", "savings by lever, in order, each after the ones before it (they add up to counterfactual - cost):",
            _table(header, levers, text_columns=2)]
    if report.shadow:
        out += ["", "shadow routing policies (picks never acted on; costs: the same tokens on each pick's tier):",
                _table(SHADOW_COLUMNS, [_shadow(s) for s in report.shadow], text_columns=1, left=(3, 4))]
    return "\n".join(out) + "\n"


def _usd(amount: Decimal) -> str:
    return f"{amount:.6f}"


def _totals(r: UsageRow) -> tuple[str, ...]:
    cost, ref = Decimal(r.cost_usd), Decimal(r.reference_cost_usd)
    saved = f"{(1 - cost / ref) * 100:.1f}%" if ref > 0 else "-"
    return (r.tenant, r.tier, str(r.requests), str(r.prompt_tokens), str(r.cached_prompt_tokens),
            str(r.completion_tokens), _usd(cost), _usd(ref), saved)


def _levers(r: UsageRow) -> tuple[str, ...]:
    return (r.tenant, r.tier, str(r.cache_hits), _usd(Decimal(r.cache_saved_usd)), str(r.routed_requests),
            _usd(Decimal(r.routing_saved_usd)), str(r.fallbacks), _usd(Decimal(r.fallback_saved_usd)),
            _usd(Decimal(r.prefix_saved_usd)), _usd(Decimal(r.bulk_saved_usd)), str(r.escalations),
            _usd(Decimal(r.cascade_saved_usd)))


def _unsplit(r: UsageRow) -> Decimal:
    levers = (r.cache_saved_usd, r.routing_saved_usd, r.fallback_saved_usd, r.prefix_saved_usd, r.bulk_saved_usd,
              r.cascade_saved_usd)
    return Decimal(r.reference_cost_usd) - Decimal(r.cost_usd) - sum((Decimal(x) for x in levers), Decimal(0))


def _shares(counts: dict[str, int], total: int) -> str:
    return " ".join(f"{tier} {n / total:.0%}" for tier, n in counts.items()) if total else "-"


def _shadow(s: ShadowPolicyRow) -> tuple[str, ...]:
    cost, live = Decimal(s.cost_usd), Decimal(s.live_cost_usd)
    change = f"{(cost / live - 1) * 100:+.1f}%" if live > 0 else "-"
    agreed = f"{s.agreed / s.requests:.1%}" if s.requests else "-"
    return (s.policy, str(s.requests), agreed, _shares(s.tiers, s.requests), _shares(s.live_tiers, s.requests),
            _usd(cost), _usd(live), change)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int,
           left: Sequence[int] = ()) -> str:
    """Columns padded to width: the first ``text_columns`` and those in ``left`` flush left, the
    rest (figures) flush right."""
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i < text_columns or i in left else c.rjust(widths[i])
                         for i, c in enumerate(cells)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
