"""Accounting settings (environment variables share the ``SF_`` prefix, e.g. ``SF_DATABASE_URL``)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from services.shared.settings import ServiceSettings

#: The async driver each supported database is reached with; a plain URL gets it filled in.
ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}


class AccountingSettings(ServiceSettings):
    # The database URL may hold a password: keep input values out of validation errors (and logs).
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    database_url: str = Field(
        default="sqlite+aiosqlite:///var/skinflint.db",
        description="The ledger: SQLite for one machine, PostgreSQL (postgresql+asyncpg://...) shared "
                    "by every replica in production.",
    )
    health_port: int = Field(default=9102, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics.")
    consumer_batch_size: int = Field(
        default=64, ge=1, description="Usage events pulled at once and written concurrently."
    )
    fetch_timeout_s: float = Field(
        default=1.0, gt=0,
        description="How long one pull waits for a full batch of usage events; when traffic is light, "
                    "an event reaches the ledger within about this long.",
    )
    ack_wait_s: float = Field(
        default=30.0, gt=1, description="An event not acknowledged this long is redelivered."
    )
    max_ack_pending: int = Field(
        default=1000, ge=1, description="Unacknowledged events the durable consumer hands out in total."
    )
    max_deliveries: int = Field(
        default=-1, ge=-1,
        description="Attempts before JetStream gives up on an event; -1 never gives up, because a "
                    "dropped event is a lost charge (malformed events are rejected explicitly).",
    )
    retry_backoff_s: float = Field(
        default=1.0, gt=0, description="Redelivery delay after the first failed ledger write."
    )
    retry_backoff_max_s: float = Field(
        default=60.0, gt=0, description="Longest redelivery delay; the delay doubles per attempt."
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept ``postgresql://`` or ``sqlite://`` as people write them; refuse what we don't run on."""
        try:
            url = make_url(value)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {value!r}") from exc
        # Read the names off the URL rather than asking SQLAlchemy, which would load the dialect.
        backend, _, driver = url.drivername.partition("+")
        if backend == "postgres":  # the spelling Heroku and others hand out
            backend = "postgresql"
        if backend not in ASYNC_DRIVERS:
            raise ValueError(f"unsupported database {backend!r}: use sqlite+aiosqlite:///path or "
                             "postgresql+asyncpg://user@host/db")
        wanted = ASYNC_DRIVERS[backend]
        if driver not in ("", wanted):
            raise ValueError(f"the {backend} ledger needs the async driver {wanted!r} "
                             f"(write {backend}+{wanted}://...), not {driver!r}")
        return url.set(drivername=f"{backend}+{wanted}").render_as_string(hide_password=False)
