"""``skinflint batch ...``: OpenAI batch jobs through a running skinflint, from a shell.

- ``submit FILE [--wait]``: upload a batch input file, create the batch, print its id; with
  ``--wait`` follow it with a progress bar, then download its output and error files.
- ``status ID [--watch]``, ``list``, ``cancel ID``, ``download ID``.
- ``publish FILE --job NAME --tenant T [--wait]``: the same file as a bus job on NATS
  (``services.cli_batch_publish``, ``services.cli_batch_bus``), followed over HTTP like ``submit``.

Every HTTP call goes through the official ``openai`` SDK against ``<url>/v1``: what works here
works from any OpenAI client. The ingress comes from ``--url`` or ``SKINFLINT_URL`` (as for
``skinflint usage``; a URL ending in ``/v1`` is taken as it is), the key from ``--api-key`` or
``SKINFLINT_API_KEY``. Results go to stdout (a batch id, tables); progress and errors to stderr.

Exit codes: 0 done (a followed batch ``completed``); 1 a followed batch ended ``failed``,
``expired`` or ``cancelled``; 2 an error (the API refused, no answer, bad input), one red line;
130 stopped waiting with Ctrl-C (the batch keeps running).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from services.cli_batch_view import TERMINAL, batch_table, duration, figures, rate_text, when

if TYPE_CHECKING:
    # Imported where used: the SDK takes ~0.7 s to import, which every other skinflint command
    # would pay, and the operator commands run without it.
    import openai
    from openai.types import Batch

batch_app = typer.Typer(help="Batch jobs (OpenAI Batch API, or the bus): submit, follow, download.",
                        no_args_is_help=True)
out = Console()
err = Console(stderr=True)

CHAT_ENDPOINT: Final = "/v1/chat/completions"
#: How long a followed batch's ingress may stay unreachable before giving up (a restart passes).
UNREACHABLE_S = 60.0
#: How long after its end message a bus job may take to appear over HTTP.
APPEAR_S = 60.0

UrlOption = Annotated[str, typer.Option("--url", "--base-url", envvar="SKINFLINT_URL",
                                        help="skinflint's ingress (the OpenAI base URL is <url>/v1).")]
KeyOption = Annotated[str, typer.Option("--api-key", envvar="SKINFLINT_API_KEY", help="API key (Bearer).")]
IntervalOption = Annotated[float, typer.Option(min=0, help="Seconds between polls while following.")]
WindowOption = Annotated[str, typer.Option("--window", help="completion_window: 24h (skinflint: 1h..168h).")]
MetadataOption = Annotated[list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE, repeatable.")]
OutputOption = Annotated[Path | None, typer.Option(help="Where the output file goes (default <FILE>.output.jsonl).")]
ErrorsOption = Annotated[Path | None, typer.Option(help="Where the error file goes (default <FILE>.errors.jsonl).")]
DEFAULT_URL = "http://127.0.0.1:8000"


def make_client(base_url: str, api_key: str) -> openai.OpenAI:
    """The client every command uses (tests replace it with one on a fake transport)."""
    import openai

    return openai.OpenAI(base_url=base_url, api_key=api_key)


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def fail(message: str) -> NoReturn:
    err.print(Text(message, style="red"), soft_wrap=True)
    raise typer.Exit(2)


def _client(url: str, api_key: str) -> openai.OpenAI:
    if not api_key:
        fail("no API key: pass --api-key or set SKINFLINT_API_KEY")
    try:
        import openai  # noqa: F401
    except ImportError:
        fail("the batch commands need the openai package: pip install openai")
    # A shell command prints its own lines: the HTTP clients' per-request INFO lines are noise,
    # and would go to whatever handler the process's logging happens to have.
    for name in ("httpx", "httpx2", "openai"):  # httpx2: the openai SDK's own copy of httpx
        logging.getLogger(name).setLevel(logging.WARNING)
    return make_client(api_base(url), api_key)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return exc.response.text or exc.message


@contextmanager
def api_errors(url: str) -> Iterator[None]:
    """Turn the SDK's and the file system's errors into one red line and exit code 2."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        fail(f"{exc.status_code}: {_error_message(exc)}")
    except openai.APIConnectionError as exc:
        fail(f"{api_base(url)} did not answer ({exc.__cause__ or exc}); is skinflint running? (`make run`)")
    except OSError as exc:
        fail(f"{exc.filename or ''}: {exc.strerror or exc}")


def parse_metadata(pairs: list[str] | None) -> dict[str, str]:
    metadata: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--metadata {pair!r}: write KEY=VALUE")
        metadata[key] = value
    return metadata


# -- progress --------------------------------------------------------------------------------


def _bar() -> Progress:
    return Progress(TextColumn("[bold]{task.fields[status]}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("failed {task.fields[failed]}"), TextColumn("{task.fields[rate]}"),
                    TextColumn("ETA {task.fields[eta]}"), TimeElapsedColumn(), console=err, transient=True)


def follow(client: openai.OpenAI, url: str, batch_id: str, interval: float, appear_s: float = 0.0) -> Batch:
    """Poll the batch until it ends, drawing a progress bar. Tolerates the ingress being away for
    ``UNREACHABLE_S`` and, for ``appear_s``, the batch not existing yet (a bus job until the batch
    service takes it). Ctrl-C stops following (exit 130) and leaves the batch running."""
    started = last_seen = time.monotonic()
    try:
        with _bar() as bar:
            task = bar.add_task(batch_id, total=None, status="waiting", failed=0, rate=rate_text(None), eta="-")
            while True:
                batch = _poll(client, url, batch_id, started, last_seen, appear_s)
                if batch is not None:
                    last_seen = time.monotonic()
                    f = figures(batch, time.time())
                    bar.update(task, total=f.total or None, completed=f.done, status=batch.status, failed=f.failed,
                               rate=rate_text(f.per_second), eta=duration(f.eta_s))
                    if batch.status in TERMINAL:
                        return batch
                else:
                    bar.update(task, status="waiting")
                time.sleep(interval)
    except KeyboardInterrupt:
        err.print(f"stopped waiting; batch {batch_id} keeps running. Follow it: skinflint batch status {batch_id} "
                  f"--watch; cancel it: skinflint batch cancel {batch_id}", soft_wrap=True)
        raise typer.Exit(130) from None


def _poll(client: openai.OpenAI, url: str, batch_id: str, started: float, last_seen: float,
          appear_s: float) -> Batch | None:
    import openai

    try:
        return client.batches.retrieve(batch_id)
    except openai.NotFoundError:
        if time.monotonic() - started < appear_s:
            return None
        if appear_s:
            fail(f"batch {batch_id} did not appear within {appear_s:.0f} s: is skinflint's batch service running?")
        raise
    except openai.APIConnectionError:
        if time.monotonic() - last_seen < UNREACHABLE_S:
            return None
        raise


# -- reports ---------------------------------------------------------------------------------


def job_cost(client: openai.OpenAI, batch: Batch) -> tuple[Decimal, Decimal] | None:
    """(cost, cost without skinflint) of the batch's requests from ``GET /v1/usage?job_id=``; None
    when that fails, nothing is charged yet, or the answer cannot be this job's alone: an ingress
    without the filter ignores ``job_id`` and answers the whole tenant's usage, so a report that
    does not echo the job id must count no more requests than the batch holds."""
    import openai

    try:
        report = client.with_options(max_retries=0, timeout=15).get(
            "/usage", cast_to=object, options={"params": {"job_id": batch.id, "format": "json"}})
    except openai.OpenAIError:
        return None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
        return None
    rows = [r for r in report["rows"] if isinstance(r, dict)]
    total = batch.request_counts.total if batch.request_counts else 0
    try:
        if not rows or (report.get("job_id") != batch.id and sum(int(r.get("requests", 0)) for r in rows) > total):
            return None
        return (sum((Decimal(str(r.get("cost_usd", "0"))) for r in rows), Decimal(0)),
                sum((Decimal(str(r.get("reference_cost_usd", "0"))) for r in rows), Decimal(0)))
    except (InvalidOperation, TypeError, ValueError):
        return None


def download(client: openai.OpenAI, file_id: str, path: Path) -> int:
    """Stream a file's content to ``path``; how many lines it holds."""
    with client.files.with_streaming_response.content(file_id) as response:
        response.stream_to_file(path)
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def collect(client: openai.OpenAI, batch: Batch, output: Path, errors: Path) -> int:
    """Download a finished batch's files, print the summary; the exit code (0: completed)."""
    files: dict[str, str] = {}
    for label, file_id, path in (("output", batch.output_file_id, output), ("errors", batch.error_file_id, errors)):
        if file_id:
            files[f"{label} ->"] = f"{path} ({download(client, file_id, path)} lines)"
    out.print(batch_table(batch, job_cost(client, batch), files))
    return 0 if batch.status == "completed" else 1


def _default_paths(stem_of: Path, output: Path | None, errors: Path | None) -> tuple[Path, Path]:
    return (output or stem_of.with_name(stem_of.stem + ".output.jsonl"),
            errors or stem_of.with_name(stem_of.stem + ".errors.jsonl"))


# -- commands --------------------------------------------------------------------------------

InputFile = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                           help="Batch input (JSONL: custom_id, method, url, body per line).")]


class _Uploading(io.BufferedReader):
    """A file whose reads move a progress bar (httpx reads the upload from it in chunks)."""

    def __init__(self, path: Path, moved: Callable[[int], None]) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._moved = moved

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._moved(self.tell())
        return data


def upload(client: openai.OpenAI, path: Path) -> str:
    """``POST /v1/files`` (purpose batch) with a progress bar; the file id."""
    with Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(), console=err, transient=True) as bar:
        task = bar.add_task("upload", total=path.stat().st_size)
        with _Uploading(path, lambda at: bar.update(task, completed=at)) as handle:
            return client.files.create(file=(path.name, handle), purpose="batch").id


@batch_app.command("submit")
def submit(
    file: InputFile,
    window: WindowOption = "24h",
    metadata: MetadataOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow it to the end, then download its files.")] = False,
    output: OutputOption = None,
    errors: ErrorsOption = None,
    interval: IntervalOption = 1.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = "",
) -> None:
    """Upload FILE, start a batch on /v1/chat/completions, print its id (--wait: and follow it)."""
    meta = parse_metadata(metadata)
    client = _client(url, api_key)
    with api_errors(url):
        file_id = upload(client, file)
        batch = client.batches.create(input_file_id=file_id, endpoint=CHAT_ENDPOINT,
                                      completion_window=cast(Any, window), metadata=meta or None)
        out.print(batch.id)
        err.print(f"batch {batch.id} ({batch.status}) from {file.name} ({file_id})", soft_wrap=True)
        if not wait:
            return
        output, errors = _default_paths(file, output, errors)
        code = collect(client, follow(client, url, batch.id, interval), output, errors)
    raise typer.Exit(code)


@batch_app.command("status")
def status(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id.")],
    watch: Annotated[bool, typer.Option("--watch", help="Follow it with a progress bar to the end.")] = False,
    interval: IntervalOption = 1.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = "",
) -> None:
    """Status, counts, rate and ETA, files, tokens and cost of a batch."""
    client = _client(url, api_key)
    with api_errors(url):
        batch = follow(client, url, batch_id, interval) if watch else client.batches.retrieve(batch_id)
        out.print(batch_table(batch, job_cost(client, batch)))
    if watch:
        raise typer.Exit(0 if batch.status == "completed" else 1)


@batch_app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = "",
) -> None:
    """Your tenant's batches, newest first."""
    client = _client(url, api_key)
    with api_errors(url):
        page = client.batches.list(limit=limit)
    table = Table("id", "status", "done", "failed", "created", "metadata")
    for batch in page.data:
        f = figures(batch, time.time())
        table.add_row(batch.id, batch.status, f"{f.done}/{f.total}", str(f.failed), when(batch.created_at),
                      Text(", ".join(f"{k}={v}" for k, v in (batch.metadata or {}).items())))
    if not page.data:
        err.print("no batches yet")
        return
    out.print(table)


@batch_app.command("cancel")
def cancel(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = "",
) -> None:
    """Cancel a batch: requests already running finish, the rest go to its error file unrun."""
    client = _client(url, api_key)
    with api_errors(url):
        batch = client.batches.cancel(batch_id)
    f = figures(batch, time.time())
    out.print(f"batch {batch.id}: {batch.status} ({f.done} of {f.total} finished; the rest will be in its error "
              f"file as batch_cancelled)", soft_wrap=True)


@batch_app.command("download")
def download_files(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id.")],
    output: Annotated[Path | None, typer.Option(help="Default <ID>.output.jsonl.")] = None,
    errors: Annotated[Path | None, typer.Option(help="Default <ID>.errors.jsonl.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = "",
) -> None:
    """Download a batch's output and error files."""
    client = _client(url, api_key)
    output, errors = _default_paths(Path(batch_id), output, errors)
    with api_errors(url):
        batch = client.batches.retrieve(batch_id)
        if not batch.output_file_id and not batch.error_file_id:
            fail(f"batch {batch_id} has no files yet (status {batch.status}); follow it: "
                 f"skinflint batch status {batch_id} --watch")
        for file_id, path in ((batch.output_file_id, output), (batch.error_file_id, errors)):
            if file_id:
                out.print(f"{path} ({download(client, file_id, path)} lines)")
