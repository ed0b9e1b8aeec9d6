"""``python -m tests.support.fake_worker``: the real worker service with the fake engine.

Integration tests run it as a process so they can kill it (SIGKILL) or stop it (SIGTERM) the
way an operator would. ``SF_FAKE_SECONDS_PER_TOKEN`` sets the pace, ``SF_FAKE_FIRST_TOKEN_S`` the
prefill's time before the first token.
"""

from __future__ import annotations

from pydantic import Field

from services.shared.runner import run, settings_or_exit
from services.worker.service import WorkerService
from services.worker.settings import WorkerSettings
from tests.support.fakes import FakeEngine


class FakeWorkerSettings(WorkerSettings):
    fake_seconds_per_token: float = Field(default=0.05, ge=0)
    fake_first_token_s: float = Field(default=0.0, ge=0)


def main() -> None:
    settings = settings_or_exit(FakeWorkerSettings, "worker")
    run(lambda: WorkerService(settings, lambda s: FakeEngine(
        seconds_per_token=settings.fake_seconds_per_token, first_token_s=settings.fake_first_token_s)),
        settings, "worker")


if __name__ == "__main__":
    main()
