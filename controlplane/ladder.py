"""Log-scale ladders: a positive value snapped to the nearest power of a step.

Pure, no imports from the project: the weight policy (``decide.weights``) snaps its inputs
with it and the agent (``agent.servers.speed``) the speed it publishes, so both agree on
the rungs without the agent importing ``decide``.
"""

from __future__ import annotations

import math


def snap(value: float, step: float) -> float:
    """The power of ``step`` nearest to ``value`` > 0 on a log scale (halfway goes up),
    to 12 significant digits (so sqrt(2) ** -2 is 0.5, not 0.49999999999999994)."""
    rung = step ** math.floor(math.log(value) / math.log(step) + 0.5)
    return float(f"{rung:.12g}")
