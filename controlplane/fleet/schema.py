"""Redis key names of schema v1. Every key aixds writes starts with ``aixds:v1:``.

Observed state (written by agents, expiring):
  ``aixds:v1:replica:<replica_id>``  hash; field ``record`` = JSON (see ``codec``), TTL.
  ``aixds:v1:events``                pub/sub channel; message = a replica id that changed.
Intent (written by the API, never expiring):
  ``aixds:v1:intent``                hash; field ``doc`` = JSON, field ``revision`` = int.
  ``aixds:v1:desired:<node>``        hash of desired model placement for one node.
"""

from __future__ import annotations

PREFIX = "aixds:v1:"
REPLICA_PREFIX = PREFIX + "replica:"
EVENTS_CHANNEL = PREFIX + "events"
INTENT_KEY = PREFIX + "intent"
RECORD_FIELD = "record"


def replica_key(replica_id: str) -> str:
    return REPLICA_PREFIX + replica_id


def replica_id_from_key(key: str) -> str:
    if not key.startswith(REPLICA_PREFIX):
        raise ValueError(f"not a replica key: {key!r}")
    return key[len(REPLICA_PREFIX) :]


def desired_key(node: str) -> str:
    return PREFIX + "desired:" + node
