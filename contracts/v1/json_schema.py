"""Whether a JSON Schema is well-formed, for ``response_format.json_schema.schema``."""

from __future__ import annotations

from typing import Any


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming what is wrong and where, if ``schema`` is not a valid JSON Schema.

    The draft is the one ``$schema`` names, else 2020-12 (the draft OpenAI's structured outputs
    use). An unknown ``$schema`` is refused rather than checked against a guessed draft.
    Whether the grammar backend can enforce every keyword is the worker's question, not this one.
    """
    import jsonschema  # here: only requests with a schema pay for the import
    from jsonschema.validators import validator_for

    declared = schema.get("$schema")
    if declared is not None:
        validator = validator_for(schema, default=None) if isinstance(declared, str) else None
        if validator is None:
            raise ValueError(f"$schema {declared!r} is not a JSON Schema draft this service knows; "
                             "omit it (draft 2020-12) or name a published draft's URI")
    else:
        validator = jsonschema.Draft202012Validator
    try:
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path).lstrip(".")
        raise ValueError(f"not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else "")) from exc
