"""The ``skinflint`` command: operator tasks from a shell.

- ``skinflint cache score FILE``: hit and false-hit rates of the cache's verifier on a labelled
  pair file (``fow-cache``'s JSONL: ``a``, ``b``, ``same_answer``, ``category``), overall and per
  category, through exactly the code the cache service runs (``services.cache.quality``).
- ``skinflint cache train``: fit and calibrate the verifier, write its artifact.
- ``skinflint cache purge``: remove cached answers through a running ingress (your tenant's, by
  tag, or with an admin key another tenant's or all).
- ``skinflint usage``: the usage and savings table from a running ingress.
- ``skinflint router train`` / ``skinflint router eval``: fit the learned routing policy on labelled
  prompts; RouteLLM's metrics and the cost/quality curve (``services.classifier``).
- ``skinflint route FILE``: the tier the configured router picks for each prompt of a JSONL file.
- ``skinflint batch submit|status|list|cancel|download``: batch jobs through the Batch API, with a
  progress bar (``services.cli_batch``); ``skinflint batch publish``: a job over the bus as the
  tenant's NATS user.

The API key comes from ``--api-key`` or ``SKINFLINT_API_KEY``; the ingress from ``--url`` or
``SKINFLINT_URL`` (default ``http://127.0.0.1:8000``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from services import cli_batch_publish  # noqa: F401  (registers `skinflint batch publish`)
from services.cache import quality
from services.cli_batch import batch_app

app = typer.Typer(help="skinflint: operate the LLM cost-cutting gateway.", no_args_is_help=True,
                  add_completion=False)
cache_app = typer.Typer(help="The cache stage: verifier quality, training, purges.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
router_app = typer.Typer(help="The router: train and evaluate the learned policy.", no_args_is_help=True)
app.add_typer(router_app, name="router")
app.add_typer(batch_app, name="batch")
err = Console(stderr=True)

UrlOption = Annotated[str, typer.Option("--url", envvar="SKINFLINT_URL", help="Ingress base URL.")]
KeyOption = Annotated[str, typer.Option("--api-key", envvar="SKINFLINT_API_KEY", help="API key (Bearer).")]
Target = Annotated[float | None, typer.Option(
    help="False-hit rate to calibrate to (default: SF_CACHE_TARGET_FALSE_HIT_RATE, 0.005).")]


@cache_app.command("score")
def cache_score(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="Labelled pairs (JSONL).")],
    cv: Annotated[bool, typer.Option("--cv", help="Cross-validate on FILE instead of using the artifact.")] = False,
    folds: Annotated[int, typer.Option(min=2, help="Folds for --cv.")] = 10,
    target: Target = None,
    verifier: Annotated[Path | None, typer.Option(help="Artifact (default: SF_CACHE_VERIFIER_FILE).")] = None,
) -> None:
    """Hit and false-hit rates on FILE, overall and per category, beside cosine thresholds."""
    argv = ["score", str(file), "--folds", str(folds)]
    if cv:
        argv.append("--cv")
    if target is not None:
        argv += ["--target", str(target)]
    if verifier is not None:
        argv += ["--verifier", str(verifier)]
    quality.main(argv)


@cache_app.command("train")
def cache_train(
    pairs: Annotated[Path | None, typer.Option(help="Labelled pairs (default: the shipped training set).")] = None,
    out: Annotated[Path | None, typer.Option(help="Artifact path (default: SF_CACHE_VERIFIER_FILE).")] = None,
    target: Target = None,
) -> None:
    """Fit and calibrate the verifier; the cache service loads the artifact at start."""
    argv = ["train"]
    for flag, value in (("--pairs", pairs), ("--out", out), ("--target", target)):
        if value is not None:
            argv += [flag, str(value)]
    quality.main(argv)


#: Options after the command go to the module that implements it (its --help lists them).
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@router_app.command("train", context_settings=PASS_THROUGH)
def router_train(ctx: typer.Context) -> None:
    """Fit the learned policy on labelled prompts and write its artifact (the classifier loads it at
    start). Options: --data PATH... (the shipped set, or your own JSONL of {"prompt", "scores": {"weak",
    "strong"}} or {"prompt", "label"}), --out, --target; --help lists them all."""
    from services.classifier.learned import train_main

    raise typer.Exit(train_main(ctx.args))


@router_app.command("eval", context_settings=PASS_THROUGH)
def router_eval(ctx: typer.Context) -> None:
    """APGR, CPT(50%), CPT(80%) and the cost at 95% of the strong tier's quality of the learned policy
    against random and length baselines, on a labelled split; --png draws the cost/quality curve.
    --help lists the options."""
    from services.classifier.evaluate import eval_main

    raise typer.Exit(eval_main(ctx.args))


@app.command("route")
def route(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help='JSONL, one {"prompt": ...} (or {"messages": [...]}) per line.')],
    tenant_class: Annotated[str | None, typer.Option(help="The tenant class rules see.")] = None,
    min_tier: Annotated[str | None, typer.Option(help="As X-Skinflint-Min-Tier.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON decision per line instead of a table.")] = False,
) -> None:
    """The tier the running configuration (SF_TIERS_FILE's routing, its policy and threshold) picks for
    each line, with the score: the classifier service's own code."""
    from services.classifier.offline import route_file

    raise typer.Exit(route_file(file, tenant_class=tenant_class, min_tier=min_tier, as_json=as_json))


def _call(method: str, url: str, path: str, api_key: str, **kwargs: Any) -> httpx.Response:
    if not api_key:
        err.print("[red]no API key: pass --api-key or set SKINFLINT_API_KEY[/red]")
        raise typer.Exit(2)
    try:
        response = httpx.request(method, url.rstrip("/") + path, headers={"Authorization": f"Bearer {api_key}"},
                                 timeout=60, **kwargs)
    except httpx.HTTPError as exc:
        err.print(f"[red]{url} did not answer: {exc}[/red] (is skinflint running? `make run`)")
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        err.print(f"[red]{response.status_code}: {message}[/red]")
        raise typer.Exit(1)
    return response


@cache_app.command("purge")
def cache_purge(
    tag: Annotated[str | None, typer.Option(help="Only answers stored with this tag.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Another tenant's answers (admin key).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Every tenant's answers (admin key).")] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Remove cached answers: by default every answer of the key's own tenant."""
    body: dict[str, Any] = {"tag": tag, "tenant": tenant}
    if everything:
        body["all"] = True
    result = _call("POST", url, "/v1/cache/purge", api_key,
                   json={k: v for k, v in body.items() if v is not None}).json()
    scope = result["purged"]
    print(f"purged tenant={scope['tenant'] or 'all'} tag={scope['tag'] or 'any'}: "
          f"{result['exact_removed'] if result['exact_removed'] is not None else 'all matching'} exact, "
          f"{result['semantic_removed']} semantic")


@app.command("usage")
def usage(
    tenant: Annotated[str | None, typer.Option(help="Another tenant (admin key).")] = None,
    since: Annotated[float | None, typer.Option(help="Only requests at or after this Unix time.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only the items of this batch (its id).")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    api_key: KeyOption = "",
) -> None:
    """Usage and cost per tenant and tier against each request's counterfactual (the tier it would
    have used without routing, uncached), the savings by lever (cache, routing, fallback, prefix,
    bulk), and the shadow routing policies against the live one."""
    params: dict[str, Any] = {"format": "table"}
    if tenant is not None:
        params["tenant"] = tenant
    if since is not None:
        params["since"] = since
    if job is not None:
        params["job_id"] = job
    print(_call("GET", url, "/v1/usage", api_key, params=params).text, end="")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
