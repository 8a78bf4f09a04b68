"""The dashboard's metric names in real scrapes: ``aixds serve`` (two regions, with the
activator), a fake vLLM server with its agent, and an edge Envoy that served a request.

A name is found when a scrape has its family (a labelled metric not set yet has one) or
its sample; Envoy's ``ENVOY_STATS`` must all be in its /stats/prometheus.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.dashboards import ENVOY_STATS, exposition_names, load_dashboard, used_names
from tests.e2e.fleet import Fleet, chat
from tests.support import Procs, RedisServer

pytestmark = pytest.mark.e2e


def test_every_dashboard_name_is_in_a_real_scrape(
    procs: Procs, redis_srv: RedisServer, tmp_path: Path
) -> None:
    fleet = Fleet(procs, redis_srv)
    fleet.start_serve_two_regions(tmp_path)
    rep = fleet.add_replica("llama")
    edge = fleet.add_edge()
    fleet.wait_routable(edge, "llama", 1)
    assert chat(edge.url, "llama").status_code == 200

    envoy = exposition_names(
        httpx.get(f"http://127.0.0.1:{edge.admin}/stats/prometheus", timeout=5).text
    )
    assert ENVOY_STATS - envoy == set()
    served = httpx.get(f"{fleet.api}/metrics", timeout=5).text
    # per-endpoint and per-replica gauges carry samples for the live replica, not just a TYPE
    for name in ("aixds_endpoint_weight", "aixds_replica_queue_waiting"):
        assert any(
            line.startswith(name + "{") and f'replica="{rep.replica_id}"' in line
            for line in served.splitlines()
        ), name
    scraped = (
        envoy
        | exposition_names(served)
        | exposition_names(httpx.get(f"{rep.url}/metrics", timeout=5).text)
    )
    assert used_names(load_dashboard()) - scraped == set()
