"""Accounting settings: database URLs as people write them, and the redelivery backoff."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.subjects import ACCOUNTING_DURABLE, USAGE_SUBJECT
from services.accounting.service import consumer_config, retry_delay
from services.accounting.settings import AccountingSettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("given", "used"), [
    ("sqlite+aiosqlite:///var/skinflint.db", "sqlite+aiosqlite:///var/skinflint.db"),
    ("sqlite:///var/skinflint.db", "sqlite+aiosqlite:///var/skinflint.db"),
    ("postgresql+asyncpg://postgres@127.0.0.1:5432/test", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"),
    ("postgresql://sf:pw@db/ledger", "postgresql+asyncpg://sf:pw@db/ledger"),
    ("postgres://sf:pw@db/ledger", "postgresql+asyncpg://sf:pw@db/ledger"),
])
def test_database_url_gets_the_async_driver(given: str, used: str) -> None:
    assert AccountingSettings(database_url=given).database_url == used


@pytest.mark.parametrize(("given", "complaint"), [
    ("postgresql+psycopg2://sf:secret-pw@db/ledger", "needs the async driver 'asyncpg'"),
    ("mysql://sf:secret-pw@db/ledger", "unsupported database 'mysql'"),
    ("not a url", "not a database URL"),
])
def test_unusable_database_url_is_refused_without_echoing_it(given: str, complaint: str) -> None:
    with pytest.raises(ValidationError) as err:
        AccountingSettings(database_url=given)
    assert complaint in str(err.value)
    assert "secret-pw" not in str(err.value)


def test_environment_sets_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_DATABASE_URL", "postgresql://sf@db/ledger")
    assert AccountingSettings().database_url == "postgresql+asyncpg://sf@db/ledger"


def test_retry_delay_doubles_up_to_the_cap() -> None:
    settings = AccountingSettings(retry_backoff_s=0.5, retry_backoff_max_s=3.0)
    assert [retry_delay(settings, n) for n in (1, 2, 3, 4, 5, 1000)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_consumer_acks_explicitly_and_never_gives_up_by_default() -> None:
    config = consumer_config(AccountingSettings(ack_wait_s=12.0))
    assert (config.ack_policy, config.ack_wait, config.max_deliver) == ("explicit", 12.0, -1)
    assert (config.durable_name, config.filter_subject) == (ACCOUNTING_DURABLE, USAGE_SUBJECT)
