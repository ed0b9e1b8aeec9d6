"""What of a whole answer its stream has not carried yet."""

from __future__ import annotations

import pytest

from services.ingress.gateway import unstreamed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "streamed", "rest"), [
    ("answered whole", [], "answered whole"),   # a stage answered without streaming
    ("Paris is", ["Paris", " is"], ""),         # the chunks said it all
    ("Paris is big", ["Paris", " is"], " big"), # the end came only with the final answer
    ("", [], ""),
    ("other", ["Paris"], ""),                    # chunks that disagree are never repeated
])
def test_only_what_was_not_streamed_is_sent(text: str, streamed: list[str], rest: str) -> None:
    assert unstreamed(text, streamed) == rest
