"""Usage reports as a plain-text table a person reads."""

from __future__ import annotations

from decimal import Decimal

from contracts.v1 import UsageReport

COLUMNS = ("tenant", "tier", "requests", "prompt", "cached", "completion", "cost $", "reference $", "saved",
           "cache hits", "cache saved $")


def render_table(report: UsageReport) -> str:
    rows = []
    for r in report.rows:
        cost, ref = Decimal(r.cost_usd), Decimal(r.reference_cost_usd)
        saved = f"{(1 - cost / ref) * 100:.1f}%" if ref > 0 else "-"
        rows.append((r.tenant, r.tier, str(r.requests), str(r.prompt_tokens), str(r.cached_prompt_tokens),
                     str(r.completion_tokens), f"{cost:.6f}", f"{ref:.6f}", saved, str(r.cache_hits),
                     f"{Decimal(r.cache_saved_usd):.6f}"))
    if not rows:
        return "no usage recorded yet\n"
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    numeric = {i for i in range(2, len(COLUMNS))}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells))

    out = [line(COLUMNS), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    return "\n".join(out) + "\n"
