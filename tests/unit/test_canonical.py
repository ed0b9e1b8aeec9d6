"""The canonical form of a request: the same bytes exactly when the answer must be the same."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.v1 import ChatRequest
from services.shared.canonical import (
    canonical_bytes,
    exact_key,
    last_user_text,
    normalise_text,
    partition_key,
)

pytestmark = pytest.mark.unit
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
          "required": ["city"], "additionalProperties": False}


def req(content: str = "What is the capital of France?", system: str | None = None,
        history: list[dict[str, str]] | None = None, **fields: Any) -> ChatRequest:
    messages = ([{"role": "system", "content": system}] if system else []) + (history or [])
    return ChatRequest.model_validate(
        {"model": "smollm2-135m", "messages": [*messages, {"role": "user", "content": content}], **fields})


def test_key_order_in_schemas_does_not_change_the_key() -> None:
    shuffled = {"additionalProperties": False, "required": ["city"],
                "properties": {"year": {"type": "integer"}, "city": {"type": "string"}}, "type": "object"}
    a = req(response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}})
    b = req(response_format={"json_schema": {"schema": shuffled, "name": "c"}, "type": "json_schema"})
    assert canonical_bytes(a) == canonical_bytes(b)


@pytest.mark.parametrize("variant", [
    "What is the capital of France?  ",
    "  What is the capital of France?",
    "What  is the\tcapital of France?",
    "What is the capital of France?\r\n",
])
def test_whitespace_that_means_nothing_is_normalised(variant: str) -> None:
    assert exact_key("acme", req(variant)) == exact_key("acme", req())


def test_unicode_forms_of_the_same_text_are_one() -> None:
    composed, decomposed = "Où est le café ?", "Ou\u0300 est le cafe\u0301 ?"
    assert composed != decomposed
    assert exact_key("acme", req(composed)) == exact_key("acme", req(decomposed))


def test_indentation_and_line_breaks_are_meaning() -> None:
    code = "Fix this:\ndef f():\n    return 1"
    assert exact_key("acme", req(code)) != exact_key("acme", req(code.replace("    ", "")))
    assert exact_key("acme", req("a\nb")) != exact_key("acme", req("a b"))
    assert normalise_text("  x  \n\n    y\t z  ") == "x\n\n    y z"


def test_fields_that_do_not_change_the_answer_are_left_out() -> None:
    plain = exact_key("acme", req())
    assert exact_key("acme", req(stream=True, stream_options={"include_usage": True}, user="u-1")) == plain
    assert exact_key("acme", req(max_completion_tokens=20)) == exact_key("acme", req(max_tokens=20))
    assert exact_key("acme", req(stop=["b", "a"])) == exact_key("acme", req(stop=["a", "b"]))


@pytest.mark.parametrize("change", [
    {"model": "other-model"}, {"temperature": 0.0}, {"top_p": 0.5}, {"max_tokens": 7}, {"stop": "\n"},
    {"stop": "\n\n"}, {"seed": 1}, {"presence_penalty": 0.5}, {"frequency_penalty": 0.5},
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}},
])
def test_everything_that_changes_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert exact_key("acme", req(**change)) != exact_key("acme", req())


def test_the_tenant_system_prompt_and_history_are_in_the_key() -> None:
    base = exact_key("acme", req())
    assert exact_key("globex", req()) != base
    assert exact_key("acme", req(system="Answer in French.")) != base
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert exact_key("acme", req(history=history)) != base
    assert exact_key("acme", req(stop="\n")) != exact_key("acme", req(stop="\n\n"))


def test_the_partition_ignores_only_the_last_user_turns_wording() -> None:
    history = [{"role": "user", "content": "Let's talk about Europe."}, {"role": "assistant", "content": "Sure."}]
    one = req("What is the capital of France?", system="Be brief.", history=history)
    reworded = req("Which city is France's capital?", system="Be brief.", history=history)
    assert partition_key("acme", one) == partition_key("acme", reworded)
    assert exact_key("acme", one) != exact_key("acme", reworded)
    assert partition_key("globex", one) != partition_key("acme", one)
    assert partition_key("acme", req("What is the capital of France?", system="Be verbose.",
                                     history=history)) != partition_key("acme", one)
    assert partition_key("acme", req("What is the capital of France?", system="Be brief.")) != \
        partition_key("acme", one)
    assert partition_key("acme", req("What is the capital of France?", system="Be brief.", history=history,
                                     temperature=0.0)) != partition_key("acme", one)
    assert last_user_text(reworded) == "Which city is France's capital?"


def test_length_prefixing_keeps_tenant_and_request_apart() -> None:
    assert exact_key("ac", req("me")) != exact_key("acm", req("e"))
