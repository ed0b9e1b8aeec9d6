"""Files of the Batch API: a tenant's uploaded input files and the output and error files of its
batches, described as OpenAI's File object reports them (``openai.types.FileObject``)."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.shared.errors import BadRequest

#: OpenAI's bounds on ``output_expires_after.seconds`` (one hour to thirty days).
MIN_EXPIRES_AFTER_S = 3600
MAX_EXPIRES_AFTER_S = 30 * 24 * 3600


class FilePurpose(StrEnum):
    """What a file is for: an input a tenant uploads (``batch``) or what a batch wrote (``batch_output``,
    OpenAI's purpose for both the output and the error file)."""

    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def check_upload_purpose(purpose: Any) -> FilePurpose:
    """Uploads are batch input files only; a 400 naming ``purpose`` otherwise."""
    if purpose != FilePurpose.BATCH.value:
        raise BadRequest(f"purpose: skinflint stores batch input files only, so purpose must be \"batch\", not "
                         f"{purpose!r}", param="purpose", code="invalid_value")
    return FilePurpose.BATCH


def output_expiry(created_at: int, expires_after: Any, default_s: int) -> int:
    """When an output or error file created at ``created_at`` expires: OpenAI's
    ``output_expires_after`` (``{"anchor": "created_at", "seconds": 3600..2592000}``), or the
    configured ``default_s`` when the batch did not say. A 400 naming the field when it is wrong."""
    if expires_after is None:
        return created_at + default_s
    if not isinstance(expires_after, dict) or expires_after.get("anchor") != "created_at":
        raise BadRequest("output_expires_after.anchor: the only anchor is \"created_at\"",
                         param="output_expires_after.anchor", code="invalid_value")
    seconds = expires_after.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or \
            not MIN_EXPIRES_AFTER_S <= seconds <= MAX_EXPIRES_AFTER_S:
        raise BadRequest(f"output_expires_after.seconds must be a whole number from {MIN_EXPIRES_AFTER_S} to "
                         f"{MAX_EXPIRES_AFTER_S}", param="output_expires_after.seconds", code="invalid_value")
    return created_at + seconds


class StoredFile(BaseModel):
    """A file as skinflint records it: who owns it, and what OpenAI's File object shows."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(default_factory=new_file_id)
    tenant: str
    filename: str
    purpose: FilePurpose
    bytes: int = Field(ge=0)
    created_at: int
    expires_at: int | None = None
    requests: int | None = Field(default=None, description="How many requests an input file holds (its scan).")

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_openai(self) -> dict[str, Any]:
        """The File object as OpenAI's API returns it (``openai.types.FileObject`` parses it).
        ``status`` is deprecated by OpenAI; a stored file is always ``processed``."""
        return {
            "id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose.value, "status": "processed",
            "expires_at": self.expires_at, "status_details": None,
        }
