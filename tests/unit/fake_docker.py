"""A Docker Engine API stand-in serving recorded responses (tests/fixtures/docker/).

It answers what the Docker SDK asks when listing containers: ``GET /version``,
``GET /v<api>/containers/json`` (with the ``label`` filter) and
``GET /v<api>/containers/<id>/json``. ``present`` names the containers that exist now, so a
test can make them come and go; ``down`` makes every request fail with 500.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.unit.httpstub import StubRequest, StubResponse, StubServer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "docker"
_VERSIONED = re.compile(r"^/v\d+\.\d+(/.*)$")


def recorded(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


class FakeDockerEngine(StubServer):
    def __init__(self) -> None:
        self.containers = {c["Name"][1:]: c for c in map(recorded, _container_files())}
        self.summaries = {s["Names"][0][1:]: s for s in recorded("containers.json")}
        self.present = set(self.containers)
        self.down = False
        super().__init__(self._handle)

    @property
    def docker_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _handle(self, req: StubRequest) -> StubResponse:
        if self.down:
            return StubResponse(500, {"message": "Cannot connect to the Docker daemon"})
        m = _VERSIONED.match(req.path)
        path = m.group(1) if m else req.path
        if path == "/version":
            return StubResponse(200, recorded("version.json"))
        if path == "/containers/json":
            wanted = json.loads(req.query.get("filters", ["{}"])[0]).get("label", [])
            found = [self.summaries[n] for n in sorted(self.present)]
            return StubResponse(200, [c for c in found if _has(c, wanted)])
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "containers" and parts[3] == "json":
            for name in self.present:
                if self.containers[name]["Id"].startswith(parts[2]) or name == parts[2]:
                    return StubResponse(200, self.containers[name])
            return StubResponse(404, {"message": f"No such container: {parts[2]}"})
        return StubResponse(404, {"message": "page not found"})


def _container_files() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("container-*.json"))


def _has(summary: dict[str, Any], wanted: list[str]) -> bool:
    labels = summary.get("Labels") or {}
    for w in wanted:
        key, sep, value = w.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True
