"""Redis key names of schema v1. Every key aixds writes starts with ``aixds:v1:``.

Observed state (written by agents, expiring):
  ``aixds:v1:replica:<replica_id>``  hash; field ``record`` = JSON (see ``codec``), TTL.
  ``aixds:v1:events``                pub/sub channel; message = a replica id that changed.
Intent (written by the API, never expiring):
  ``aixds:v1:intent``                hash; field ``doc`` = JSON, field ``revision`` = int,
                                     field ``epoch`` = id of this history of revisions.
  ``aixds:v1:intent-events``         pub/sub channel; message = the new revision.
  ``aixds:v1:desired:<node>``        hash of desired model placement for one node.
  ``aixds:v1:audit``                 stream, one entry per change of intent, desired models
                                     or GPU-fault clears: who, action, target, old, new
                                     (``fleet.audit``); capped (``MAXLEN ~``). It lives where
                                     the intent is written (the intent home's Redis).
Control-plane coordination (written by ``aixds serve``, expiring):
  ``aixds:v1:load:<epoch-second>``   hash; fields ``s:<cluster>`` / ``e:<cluster>`` = successful /
                                     failed requests Envoys reported (LRS) in that second.
  ``aixds:v1:lock:rollback``         the replica that acts for automatic rollback (value: its
                                     instance id, with a TTL).
  ``aixds:v1:lock:serving-version``  the replica that records the serving version of a model
                                     seen for the first time (value: its instance id, TTL).
  ``aixds:v1:lock:placement``        the replica that decides model placement (TTL).
  ``aixds:v1:waiting:<instance>``    hash model -> requests one activator holds now (TTL).
  ``aixds:v1:arrivals:<second>``     hash model -> requests that reached an activator then.
  ``aixds:v1:demand``                hash model -> its demand history (JSON, bounded), kept by
                                     the placement replica.
  ``aixds:v1:placement``             the last placement decision (JSON), for the API.
"""

from __future__ import annotations

PREFIX = "aixds:v1:"
REPLICA_PREFIX = PREFIX + "replica:"
EVENTS_CHANNEL = PREFIX + "events"
INTENT_KEY = PREFIX + "intent"
INTENT_EVENTS_CHANNEL = PREFIX + "intent-events"
LOAD_PREFIX = PREFIX + "load:"
ROLLBACK_LOCK_KEY = PREFIX + "lock:rollback"
SERVING_VERSION_LOCK_KEY = PREFIX + "lock:serving-version"
PLACEMENT_LOCK_KEY = PREFIX + "lock:placement"
WAITING_PREFIX = PREFIX + "waiting:"
HELD_SINCE_PREFIX = PREFIX + "held-since:"
ARRIVALS_PREFIX = PREFIX + "arrivals:"
DEMAND_KEY = PREFIX + "demand"
PLACEMENT_KEY = PREFIX + "placement"
AUDIT_KEY = PREFIX + "audit"
RECORD_FIELD = "record"


def waiting_key(instance: str) -> str:
    return WAITING_PREFIX + instance


def held_since_key(instance: str) -> str:
    return HELD_SINCE_PREFIX + instance


def arrivals_key(second: int) -> str:
    return ARRIVALS_PREFIX + str(second)


def replica_key(replica_id: str) -> str:
    return REPLICA_PREFIX + replica_id


def replica_id_from_key(key: str) -> str:
    if not key.startswith(REPLICA_PREFIX):
        raise ValueError(f"not a replica key: {key!r}")
    return key[len(REPLICA_PREFIX) :]


def desired_key(node: str) -> str:
    return PREFIX + "desired:" + node


def fault_clear_key(node: str) -> str:
    """Time (epoch seconds, as text) of the last operator GPU-fault clear for ``node``.

    Written by the API (``POST /v1/nodes/{node}/gpu-faults/clear``), read by that node's
    agent, which then forgets latched GPU faults older than it. Never expires.
    """
    return PREFIX + "fault-clear:" + node
