"""OpenAI/vLLM wire format for the fake server: request parsing and response bodies.

Pure functions, no I/O. Bodies follow what vLLM's OpenAI-compatible server sends:
``chat.completion`` / ``text_completion`` objects, SSE chunks (``data: {...}``, then
``data: [DONE]``), and errors as ``{"error": {"message", "type", "param", "code"}}``
(the LoRA routes: flat, see ``lora_error_body``). ``usage`` carries
``prompt_tokens_details.cached_tokens``, as vLLM's does with
``--enable-prompt-tokens-details`` (and OpenAI's always).

The fake tokenizer: a prompt becomes a string of ``CHARS_PER_TOKEN``-character tokens,
deterministic and cheap, with real text so that shared prefixes are real (the prefix
cache hashes it, see ``prefix_cache``). Each piece of text (a message's content, a
content part, a prompt string) is padded to whole tokens, at least one: about four
characters per token, as for English with common tokenizers. A chat message adds four
tokens of framing before its content (the chat template's role markers); a prompt given
as token ids is one token per id.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from controlplane.sim.prefix_cache import CHARS_PER_TOKEN

_WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"
TOKENS = tuple(" " + w for w in _WORDS.split())
"""The fake output: token ``i`` is ``TOKENS[i % len(TOKENS)]``."""
DONE = b"data: [DONE]\n\n"


class BadRequest(ValueError):
    """The request body is not a valid completion request (answered with 400)."""


@dataclass(frozen=True, slots=True)
class GenRequest:
    """What the fake server needs from a completion request."""

    chat: bool
    model: str | None
    max_tokens: int
    prompt_tokens: int
    stream: bool = False
    include_usage: bool = False
    prompt: str = ""
    """The prompt as ``prompt_tokens`` tokens of ``CHARS_PER_TOKEN`` characters each."""
    first: int = 0
    """Index of the first output token: a request that continues the fake's own output
    (see ``own_tokens``) goes on where that output stopped, as a deterministic model
    would."""


def parse_request(
    body: bytes, *, chat: bool, default_tokens: int, max_model_len: int
) -> GenRequest:
    """Parse and check a ``/v1/chat/completions`` or ``/v1/completions`` body."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string")
    prompt = _chat_prompt(doc.get("messages")) if chat else _completion_prompt(doc.get("prompt"))
    first = _continued(doc, chat)
    prompt_tokens = len(prompt) // CHARS_PER_TOKEN
    limit = doc.get("max_completion_tokens") if chat else None
    if limit is None:
        limit = doc.get("max_tokens")
    if limit is None:
        limit = default_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadRequest("'max_tokens' must be a positive integer")
    if prompt_tokens + limit > max_model_len:
        raise BadRequest(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + limit} tokens ({prompt_tokens} in the messages, "
            f"{limit} in the completion)."
        )
    n = doc.get("n", 1)
    if n != 1:
        raise BadRequest("the fake server supports only n=1")
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean")
    opts = doc.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object")
    return GenRequest(
        chat=chat,
        model=model,
        max_tokens=limit,
        prompt_tokens=prompt_tokens,
        stream=stream,
        include_usage=opts.get("include_usage") is True,
        prompt=prompt,
        first=first,
    )


def _continued(doc: dict[str, Any], chat: bool) -> int:
    """How many of the fake's output tokens the request continues: a completion prompt
    that ends with them, or (chat) a last assistant message that does, with vLLM's
    ``continue_final_message`` set."""
    if not chat:
        prompt = doc.get("prompt")
        return own_tokens(prompt) if isinstance(prompt, str) else 0
    cont = doc.get("continue_final_message", False)
    if not isinstance(cont, bool):
        raise BadRequest("'continue_final_message' must be a boolean")
    if not cont:
        return 0
    if doc.get("add_generation_prompt", True) is not False:
        # vLLM's own check: the two cannot both be true (its default is true).
        raise BadRequest(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        )
    last = doc["messages"][-1]
    if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return 0
    return own_tokens(last["content"])


_WORD_INDEX = {w.strip(): i for i, w in enumerate(TOKENS)}


def own_tokens(s: str) -> int:
    """The largest ``k`` such that ``s`` ends with ``text(0, k)`` (0 when none)."""
    words = s.split(" ")
    # Walk back over the trailing words that follow each other in the output's cycle;
    # ``k`` is the longest such run that starts at the output's first word.
    k = 0
    expect: int | None = None
    # words[0] precedes the first space: not an output token
    for run, w in enumerate(reversed(words[1:]), start=1):
        i = _WORD_INDEX.get(w)
        if i is None or (expect is not None and i != expect):
            break
        if i == 0:
            k = run
        expect = (i - 1) % len(TOKENS)
    return k


_PAD = "\0"
_FRAME_TOKENS = 4
"""Tokens of the chat template's framing of one message."""


def _text(text: str) -> str:
    """``text`` padded to whole tokens, at least one."""
    short = -len(text) % CHARS_PER_TOKEN if text else CHARS_PER_TOKEN
    return text + _PAD * short


def _frame(role: str) -> str:
    """The framing tokens before a message's content (its role marker)."""
    width = _FRAME_TOKENS * CHARS_PER_TOKEN
    return f"\x01{role}\x02"[:width].ljust(width, _PAD)


def _chat_prompt(messages: Any) -> str:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    out: list[str] = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest("each message must be an object with a 'role'")
        out.append(_frame(m["role"]))
        content = m.get("content")
        if isinstance(content, str):
            out.append(_text(content))
        elif isinstance(content, list):
            out += (_text(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    return "".join(out)


def _completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return _text(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            # Each id as CHARS_PER_TOKEN bytes (its low 32 bits, big-endian).
            ids = struct.pack(f">{len(prompt)}I", *(p & 0xFFFFFFFF for p in prompt))
            return ids.decode("latin-1")
        if all(isinstance(p, str) for p in prompt):
            return "".join(_text(p) for p in prompt)
    raise BadRequest("'prompt' must be a string, a list of strings or a list of token ids")


def text(start: int, stop: int) -> str:
    return "".join(TOKENS[i % len(TOKENS)] for i in range(start, stop))


def usage(req: GenRequest, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": req.prompt_tokens,
        "total_tokens": req.prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def completion_body(
    req: GenRequest,
    rid: str,
    model: str,
    created: int,
    tokens: int,
    finish: str,
    cached_tokens: int = 0,
) -> dict[str, Any]:
    """The whole (non-streaming) response."""
    choice: dict[str, Any]
    if req.chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text(req.first, req.first + tokens)},
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
    else:
        choice = {
            "index": 0,
            "text": text(req.first, req.first + tokens),
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
    return {
        "id": rid,
        "object": "chat.completion" if req.chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage(req, tokens, cached_tokens),
    }


class ChunkWriter:
    """SSE chunks of one streamed response, each ``data: <json>\\n\\n``."""

    def __init__(self, req: GenRequest, rid: str, model: str, created: int) -> None:
        self._req = req
        obj = "chat.completion.chunk" if req.chat else "text_completion"
        # Every chunk starts with the same fields: encode them once.
        head = json.dumps(
            {"id": rid, "object": obj, "created": created, "model": model}, separators=(",", ":")
        )
        self._head = b"data: " + head[:-1].encode() + b","

    def _chunk(self, rest: dict[str, Any]) -> bytes:
        return self._head + json.dumps(rest, separators=(",", ":"))[1:].encode() + b"\n\n"

    def role(self) -> bytes:
        """The chat stream's first chunk: the assistant role, no content yet."""
        return self._chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            }
        )

    def token(self, i: int, finish: str | None) -> bytes:
        tok = TOKENS[i % len(TOKENS)]
        if self._req.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "delta": {"content": tok},
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {
                "index": 0,
                "text": tok,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
            }
        return self._chunk({"choices": [choice]})

    def usage(self, completion_tokens: int, cached_tokens: int = 0) -> bytes:
        """The last chunk when ``stream_options.include_usage`` is set: no choices."""
        body = {"choices": [], "usage": usage(self._req, completion_tokens, cached_tokens)}
        return self._chunk(body)


def error_body(message: str, type_: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def lora_error_body(message: str, type_: str, code: int) -> dict[str, Any]:
    """An error of the runtime LoRA routes: vLLM's flat ``ErrorResponse``
    (``{"object": "error", "message", "type", "param", "code"}``), as the agent's loader
    was written against; newer vLLM releases nest it as ``error_body`` does."""
    return {"object": "error", "message": message, "type": type_, "param": None, "code": code}


def parse_lora_request(body: bytes, required: tuple[str, ...]) -> dict[str, str]:
    """The string fields of a ``/v1/load_lora_adapter`` or ``/v1/unload_lora_adapter`` body.

    ``BadRequest`` when it is not a JSON object or a required field is missing or not a
    string (vLLM's request validation). Empty strings pass: vLLM checks those itself.
    """
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    out: dict[str, str] = {}
    for name in required:
        value = doc.get(name)
        if not isinstance(value, str):
            why = "is missing" if value is None else "must be a string"
            raise BadRequest(f"field {name!r} {why}")
        out[name] = value
    return out
