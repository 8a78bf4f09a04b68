"""Pure decisions: ``decide(fleet, intent, node, now) -> Plan``.

No I/O and no protobuf here: inputs are observed state, intent and a clock value;
the output is the IR in ``controlplane.ir``. Anything may import this package.
"""

from controlplane.decide.node import EnvoyNode
from controlplane.decide.plan import decide

__all__ = ["EnvoyNode", "decide"]
