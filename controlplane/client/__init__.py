"""A client for model traffic through aixds: streams that survive their server.

Envoy retries a request whose server dies before answering, but once a stream's response
headers have gone downstream nobody but the client can save it. ``ResumingStream`` reads
an OpenAI-compatible streamed completion (``/v1/completions`` or ``/v1/chat/completions``)
and, when the stream ends without finishing (the connection closes or stalls before
``data: [DONE]`` or a ``finish_reason``), asks the same address for the rest: the prompt
extended by the text already received (chat: vLLM's ``continue_final_message``), with
``max_tokens`` lowered by the tokens already received. The caller sees one stream.

``continuation`` holds the pure part (SSE events, what was received, the body of the
rest); ``stream`` the HTTP part (httpx). It imports nothing else of aixds.
"""

from controlplane.client.continuation import Received, continuation
from controlplane.client.stream import Attempt, ResumingStream, StreamFailed

__all__ = ["Attempt", "Received", "ResumingStream", "StreamFailed", "continuation"]
