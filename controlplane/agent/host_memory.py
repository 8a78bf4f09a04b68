"""How much host memory the node's sleeping model weights may take (``--host-memory``).

A server asleep on its own (vLLM's level-1 sleep) moves its weights from the GPU to host
memory, so placement keeps only as many models asleep on a node as its RAM holds. The agent
publishes that budget in every record of the node (``ReplicaRecord.host_mem_bytes``):

- ``GB`` (a number): that many GiB, for a node whose servers share RAM with other work, or
  an agent in a container that sees only part of the machine;
- ``auto`` (the default): with ``--gpu nvml`` (a real GPU node), ``AUTO_SHARE`` of the
  node's RAM (``MemTotal`` of ``/proc/meminfo``): the rest is left to the servers' own
  processes and the OS. With a simulated or no GPU source nothing is published: the RAM of
  a development machine says nothing of the simulated nodes it runs;
- ``off``: nothing is published.

Where nothing is published the control plane assumes ``aixds serve --host-sleep-ratio``
times the node's GPU memory.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

GIB: Final = 1 << 30
AUTO_SHARE: Final = 0.8
"""Share of the node's RAM that ``auto`` gives to sleeping weights."""
MAX_GIB: Final = 1 << 20
"""1 PiB: a larger ``--host-memory`` is a typo."""
MEMINFO: Final = Path("/proc/meminfo")


def meminfo_total_bytes(text: str) -> int:
    """``MemTotal`` of a ``/proc/meminfo`` text in bytes; ``ValueError`` if it has none."""
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "MemTotal":
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                return int(parts[0]) * 1024
            raise ValueError(f"unreadable MemTotal line {line!r}")
    raise ValueError("no MemTotal line")


def host_memory_bytes(value: str, gpu: str, meminfo: Path = MEMINFO) -> int:
    """The budget ``--host-memory value`` gives on a node whose ``--gpu`` is ``gpu`` (0: none
    published). ``ValueError`` says what is wrong with ``value``, or why ``auto`` cannot
    read the node's RAM on a real GPU node."""
    v = value.strip().lower()
    if v == "off":
        return 0
    if v == "auto":
        if gpu != "nvml":
            return 0
        try:
            total = meminfo_total_bytes(meminfo.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(
                f"--host-memory auto: cannot read the node's RAM from {meminfo} ({e}); "
                "give it in GiB, or off"
            ) from None
        return int(total * AUTO_SHARE)
    try:
        gib = float(v)
    except ValueError:
        raise ValueError(f"--host-memory must be GiB, auto or off, got {value!r}") from None
    if not math.isfinite(gib) or gib <= 0 or gib > MAX_GIB:
        raise ValueError(f"--host-memory must be between 0 and {MAX_GIB} GiB, got {value!r}")
    return int(gib * GIB)
