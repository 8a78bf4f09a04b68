"""A vLLM stand-in with the runtime LoRA API, for the executor tests.

A small in-test stand-in (the project's fake LLM server also has the API with
``--runtime-lora``; this one is lighter and scriptable per call): it answers as vLLM does with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``: ``/health``, ``/v1/models`` (the base model
and every loaded adapter), ``/metrics``, ``POST /v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` with vLLM's error bodies. Switches: ``fail_loads`` (answer
the next N loads with 500), ``load_delay_s``, ``runtime_updates`` (off: the routes 404).
"""

from __future__ import annotations

import threading
import time

from tests.unit.httpstub import StubRequest, StubResponse, StubServer

BASE = "meta-llama/Llama-3.1-8B-Instruct"
METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="%s"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="%s"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="%s"} 0.1
""" % (BASE, BASE, BASE)


def _error(status: int, message: str, kind: str) -> StubResponse:
    return StubResponse(
        status, {"object": "error", "message": message, "type": kind, "code": status}
    )


class FakeLoraServer(StubServer):
    def __init__(self) -> None:
        self.loras: dict[str, str] = {}
        self.fail_loads = 0
        self.load_delay_s = 0.0
        self.runtime_updates = True
        self.load_calls: list[tuple[float, str]] = []
        self.unload_calls: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        super().__init__(self._handle)

    def _handle(self, req: StubRequest) -> StubResponse:
        if req.path == "/health":
            return StubResponse(200, "")
        if req.path == "/metrics":
            return StubResponse(200, METRICS)
        if req.path == "/v1/models":
            with self._lock:
                data = [{"id": BASE, "object": "model", "root": BASE, "parent": None}] + [
                    {"id": n, "object": "model", "root": p, "parent": BASE}
                    for n, p in self.loras.items()
                ]
            return StubResponse(200, {"object": "list", "data": data})
        if req.method == "POST" and req.path in (
            "/v1/load_lora_adapter",
            "/v1/unload_lora_adapter",
        ):
            if not self.runtime_updates:
                return StubResponse(404, {"detail": "Not Found"})
            body = req.json()
            if req.path.endswith("/load_lora_adapter"):
                return self._load(body)
            return self._unload(body)
        return StubResponse(404, {"detail": "Not Found"})

    def _load(self, body: dict[str, str]) -> StubResponse:
        name, path = body.get("lora_name", ""), body.get("lora_path", "")
        self.load_calls.append((time.monotonic(), name))
        time.sleep(self.load_delay_s)
        with self._lock:
            if self.fail_loads > 0:
                self.fail_loads -= 1
                return _error(
                    500,
                    f"Failed to load LoRA adapter {name!r}: CUDA out of memory",
                    "InternalServerError",
                )
            if name in self.loras:
                return _error(
                    400, f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput"
                )
            self.loras[name] = path
        return StubResponse(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _unload(self, body: dict[str, str]) -> StubResponse:
        name = body.get("lora_name", "")
        self.unload_calls.append((time.monotonic(), name))
        with self._lock:
            if self.loras.pop(name, None) is None:
                return _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        return StubResponse(200, f"Success: LoRA adapter '{name}' removed successfully.")
