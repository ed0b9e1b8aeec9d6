"""``skinflint batch publish``: a batch file as a bus job, published as the tenant's NATS user
(``services.cli_batch_bus``), then followed over HTTP like ``submit`` (``services.cli_batch``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from contracts.v1 import BulkEnd, bus_batch_id
from services.cli_batch import (
    APPEAR_S,
    DEFAULT_URL,
    ErrorsOption,
    InputFile,
    IntervalOption,
    KeyOption,
    MetadataOption,
    OutputOption,
    UrlOption,
    WindowOption,
    _client,
    _default_paths,
    _error_message,
    api_base,
    api_errors,
    batch_app,
    collect,
    err,
    fail,
    follow,
    out,
    parse_metadata,
)
from services.cli_batch_bus import BusError, BusTarget, FileRefused, check_file, check_token, publish_job

if TYPE_CHECKING:
    import openai


@batch_app.command("publish")
def publish(
    file: InputFile,
    job: Annotated[str, typer.Option(help="The job's name (a subject token, unique per tenant).")],
    tenant: Annotated[str, typer.Option(envvar="SKINFLINT_TENANT", help="Your tenant (its NATS user's).")],
    nats_url: Annotated[str, typer.Option(envvar="SKINFLINT_NATS_URL", help="NATS server.")] = "nats://127.0.0.1:4222",
    user: Annotated[str | None, typer.Option(envvar="SKINFLINT_NATS_USER", help="NATS user.")] = None,
    password: Annotated[str | None, typer.Option(envvar="SKINFLINT_NATS_PASSWORD", help="NATS password.")] = None,
    window: WindowOption = "24h",
    metadata: MetadataOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it over HTTP to the end, then download.")] = False,
    output: OutputOption = None,
    errors: ErrorsOption = None,
    interval: IntervalOption = 1.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = "",
) -> None:
    """Publish FILE as a bus job (one BulkLine per line, then BulkEnd) and print its batch id. The
    whole file is checked first: a line that cannot be a BulkLine refuses the file, naming the line,
    before anything is sent. Publishing the same job again within an hour stores nothing twice."""
    meta = parse_metadata(metadata)
    try:
        check_token("--tenant", tenant)
        check_token("--job", job)
        lines = check_file(file)
        end = BulkEnd(lines=lines, completion_window=window, metadata=meta)
    except FileRefused as exc:
        fail(f"{file}: {exc}" if str(exc).startswith("line") else str(exc))
    except ValidationError as exc:
        fail(f"--metadata/--window: {exc.errors()[0]['msg']}")
    batch_id = bus_batch_id(tenant, job)
    client = _client(url, api_key) if wait or api_key else None
    if client is not None:
        with api_errors(url):
            _refuse_existing(client, url, batch_id, job, required=wait)
    target = BusTarget(url=nats_url, tenant=tenant, job=job, user=user, password=password)
    try:
        with Progress(TextColumn("publishing"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
            task = bar.add_task("publish", total=lines)
            asyncio.run(publish_job(target, file, end, lambda: bar.advance(task)))
    except (FileRefused, BusError) as exc:
        fail(str(exc))
    out.print(batch_id)
    err.print(f"job {job!r} published ({lines} requests): batch {batch_id}", soft_wrap=True)
    if client is None or not wait:
        return
    output, errors = _default_paths(file, output, errors)
    with api_errors(url):
        code = collect(client, follow(client, url, batch_id, interval, appear_s=APPEAR_S), output, errors)
    raise typer.Exit(code)


def _refuse_existing(client: openai.OpenAI, url: str, batch_id: str, job: str, *, required: bool) -> None:
    """A job name already used would add lines to a finished job: refuse it while HTTP can tell."""
    import openai

    try:
        batch = client.batches.retrieve(batch_id)
    except openai.NotFoundError:
        return
    except openai.APIConnectionError:
        if required:
            raise
        err.print(f"{api_base(url)} did not answer: not checking whether job {job!r} exists", soft_wrap=True)
        return
    except openai.APIStatusError as exc:
        fail(f"{exc.status_code}: {_error_message(exc)}")
    fail(f"job {job!r} already exists as batch {batch_id} (status {batch.status}); pick another --job "
         f"(`skinflint batch status {batch_id}` shows it)")
