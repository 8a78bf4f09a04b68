"""What a cut stream received, and the request body that asks for the rest (pure)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"


@dataclass
class Received:
    """What one logical stream has received so far, over all its attempts."""

    chat: bool
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    """Chunks that carried text: one per decoded token in vLLM's streaming (a server that
    sends several tokens in a chunk makes this an undercount, so a resumed request may
    ask for a few tokens too many; never too few)."""
    finish_reason: str | None = None
    done: bool = False
    """``data: [DONE]`` seen."""
    usage: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finished(self) -> bool:
        """The server ended the answer: nothing to resume."""
        return self.done or self.finish_reason is not None

    def feed(self, line: str) -> str:
        """Take one SSE line; returns the text it adds ('' for none). A line that is not
        a ``data:`` line (a comment, an event name, the blank separator) adds nothing."""
        if not line.startswith("data:"):
            return ""
        data = line[5:].strip()
        if data == DONE:
            self.done = True
            return ""
        try:
            doc = json.loads(data)
        except ValueError:
            raise ValueError(
                f"stream carried a data line that is not JSON: {data[:80]!r}"
            ) from None
        if not isinstance(doc, dict):
            return ""
        if isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
        choices = doc.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if self.chat:
            delta = choice.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, dict) else None
        else:
            piece = choice.get("text")
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        if not isinstance(piece, str) or not piece:
            return ""
        self.parts.append(piece)
        self.tokens += 1
        return piece


class NotResumable(ValueError):
    """The request cannot be continued from a prefix (the reason says why)."""


def continuation(body: dict[str, Any], got: Received) -> dict[str, Any] | None:
    """The body that asks for the rest of ``body``'s answer after ``got``; None when the
    answer is complete (its token budget is spent). Raises ``NotResumable`` for requests
    whose answer cannot be extended from text: ``n`` > 1, ``echo``, a completion prompt
    that is not one string (token ids, a batch of prompts)."""
    if body.get("n", 1) != 1:
        raise NotResumable("n > 1: several answers in one stream")
    if body.get("echo"):
        raise NotResumable("echo: the stream repeats the prompt")
    rest = copy.deepcopy(body)
    for key in ("max_tokens", "max_completion_tokens"):
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            if limit - got.tokens <= 0:
                return None
            rest[key] = limit - got.tokens
    if got.chat:
        messages = rest.get("messages")
        if not isinstance(messages, list) or not messages:
            raise NotResumable("no messages")
        last = messages[-1]
        if body.get("continue_final_message") and isinstance(last, dict):
            last["content"] = str(last.get("content") or "") + got.text
        else:
            messages.append({"role": "assistant", "content": got.text})
        rest["continue_final_message"] = True
        rest["add_generation_prompt"] = False
    else:
        prompt = rest.get("prompt")
        if not isinstance(prompt, str):
            raise NotResumable("the prompt is not one string")
        rest["prompt"] = prompt + got.text
    return rest
