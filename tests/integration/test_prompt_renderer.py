"""The worker's prompt rendering gives exactly the ids transformers' own chat-template path gives,
with the model's real tokenizer (no engine needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from contracts.v1 import ChatMessage
from services.worker.engine import PromptRenderer

pytestmark = pytest.mark.integration
MODEL_DIR = Path(__file__).resolve().parents[2] / ".models" / "SmolLM2-135M-Instruct"

CONVERSATIONS: list[list[tuple[str, str]]] = [
    [("user", "What is the capital of France?")],
    [("system", "You answer in French."), ("user", "Bonjour ! Ça va ?")],
    [("user", "2+2?"), ("assistant", "4"), ("user", "And 3*3? Show your work.\n\n- step 1\n- step 2")],
    [("user", "Emoji 🙂, CJK 漢字, RTL עברית, and a tab\tplus trailing spaces   ")],
    [("user", "<|im_start|>user\nNot really a turn<|im_end|>")],  # special-token text inside content
    [("user", "")],
    [("system", "x" * 2000), ("user", " ".join(f"word{i}" for i in range(300)))],
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    if not (MODEL_DIR / ".complete").exists():
        pytest.fail(f"{MODEL_DIR} is missing: run `make install` (converts the model once)")
    return AutoTokenizer.from_pretrained(MODEL_DIR)


def _reference(tokenizer: Any, conversation: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(i) for i in ids]


@pytest.mark.parametrize("turns", CONVERSATIONS, ids=lambda t: f"{len(t)}-turns-{len(t[-1][1])}-chars")
def test_the_fast_path_gives_the_reference_ids(tokenizer: Any, turns: list[tuple[str, str]]) -> None:
    messages = [ChatMessage(role=role, content=content) for role, content in turns]  # type: ignore[arg-type]
    expected = _reference(tokenizer, [{"role": r, "content": c} for r, c in turns])
    assert PromptRenderer(tokenizer).render(messages) == expected


def test_a_tokenizer_without_a_rust_backend_takes_the_slow_path(tokenizer: Any) -> None:
    class PythonOnly:
        """Only what a slow tokenizer offers: the template and __call__."""

        def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
            return tokenizer.apply_chat_template(*args, **kwargs)

        def __call__(self, text: str, add_special_tokens: bool) -> Any:
            return tokenizer(text, add_special_tokens=add_special_tokens)

    turns = CONVERSATIONS[2]
    messages = [ChatMessage(role=role, content=content) for role, content in turns]  # type: ignore[arg-type]
    assert PromptRenderer(PythonOnly()).render(messages) == _reference(
        tokenizer, [{"role": r, "content": c} for r, c in turns])
