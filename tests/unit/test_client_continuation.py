"""The pure half of the resuming client: reading SSE lines, and the body of the rest."""

from __future__ import annotations

import json

import pytest

from controlplane.client import Received, continuation
from controlplane.client.continuation import NotResumable


def _chat(piece: str | None, finish: str | None = None) -> str:
    delta = {} if piece is None else {"content": piece}
    return "data: " + json.dumps({"choices": [{"delta": delta, "finish_reason": finish}]})


def _text(piece: str, finish: str | None = None) -> str:
    return "data: " + json.dumps({"choices": [{"text": piece, "finish_reason": finish}]})


def test_feed_counts_text_chunks_and_sees_the_end() -> None:
    got = Received(chat=True)
    lines = [_chat(""), "", ": keep-alive", _chat(" a"), "", _chat(" b", "length"), ""]
    assert [got.feed(line) for line in lines] == ["", "", "", " a", "", " b", ""]
    assert (got.text, got.tokens, got.finish_reason, got.done) == (" a b", 2, "length", False)
    assert got.finished  # a finish_reason ends the answer even before [DONE]
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    got.feed("data: " + json.dumps({"choices": [], "usage": usage}))
    got.feed("data: [DONE]")
    assert got.done and got.usage == usage


def test_feed_reads_completions_and_refuses_garbage() -> None:
    got = Received(chat=False)
    assert got.feed(_text(" x")) == " x" and not got.finished
    with pytest.raises(ValueError, match="not JSON"):
        got.feed("data: {oops")


def _got(chat: bool, *pieces: str) -> Received:
    got = Received(chat=chat)
    for p in pieces:
        got.feed(_chat(p) if chat else _text(p))
    return got


def test_the_rest_of_a_chat_continues_an_assistant_message() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True}
    rest = continuation(body, _got(True, " a", " b", " c"))
    assert rest is not None
    assert rest["messages"][-1] == {"role": "assistant", "content": " a b c"}
    assert rest["max_tokens"] == 7 and rest["stream"] is True
    assert rest["continue_final_message"] is True and rest["add_generation_prompt"] is False
    assert len(body["messages"]) == 1  # the caller's body is not touched


def test_a_chat_that_already_continues_a_message_extends_it() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]
    body = {"messages": msgs, "continue_final_message": True, "max_completion_tokens": 5}
    rest = continuation(body, _got(True, " x"))
    assert rest is not None
    assert rest["messages"] == [msgs[0], {"role": "assistant", "content": "Sure, x"}]
    assert rest["max_completion_tokens"] == 4


def test_the_rest_of_a_completion_extends_its_prompt() -> None:
    rest = continuation({"prompt": "Once", "max_tokens": 3}, _got(False, " upon", " a"))
    assert rest == {"prompt": "Once upon a", "max_tokens": 1}
    # No max_tokens: the server's default bounds the rest too.
    assert continuation({"prompt": "Once"}, _got(False, " upon")) == {"prompt": "Once upon"}


def test_a_spent_budget_needs_no_rest() -> None:
    assert continuation({"prompt": "p", "max_tokens": 2}, _got(False, " a", " b")) is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"prompt": "p", "n": 2}, "n > 1"),
        ({"prompt": "p", "echo": True}, "echo"),
        ({"prompt": [1, 2, 3]}, "not one string"),
        ({"prompt": ["a", "b"]}, "not one string"),
    ],
)
def test_what_cannot_be_continued_from_text_says_why(body: dict[str, object], why: str) -> None:
    with pytest.raises(NotResumable, match=why):
        continuation(body, _got(False, " a"))
