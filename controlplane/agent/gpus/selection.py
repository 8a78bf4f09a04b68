"""Which GPUs a model server runs on: ``GpuSelection`` (CUDA_VISIBLE_DEVICES syntax).

A selection is ``all`` (the default), ``none``, or a comma-separated list of NVML indices
(``0,1``) and/or GPU UUIDs or unique UUID prefixes (``GPU-8932f937``), as in the server's
own ``CUDA_VISIBLE_DEVICES``. Indices are NVML's, i.e. ``nvidia-smi`` order (PCI bus
order). CUDA numbers GPUs the same way only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; UUIDs
are unambiguous either way. MIG instances are not supported: name the parent GPU.

``SelectedGpus`` is the per-server view of a node-wide source; ``parse_server_gpus``
reads ``--server-gpus PORT=SELECTION`` flags.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from controlplane.agent.gpus.source import GpuSource
from controlplane.fleet.model import GpuStats

log = logging.getLogger(__name__)

MIN_UUID_PREFIX = 8
"""Shortest UUID prefix accepted after ``GPU-`` (CUDA accepts any unique prefix)."""


@dataclass(frozen=True, slots=True)
class GpuSelection:
    """The GPUs of one model server. ``entries`` is ``None`` for all GPUs."""

    entries: tuple[int | str, ...] | None = None
    """NVML indices (int) and UUIDs or UUID prefixes (str, lower case), in the given order."""

    @classmethod
    def parse(cls, text: str) -> GpuSelection:
        """``all`` | ``none`` | ``0,1`` | ``GPU-<uuid>[,...]``; ``ValueError`` says why not."""
        t = text.strip()
        if t.lower() == "all":
            return cls(None)
        if t.lower() in ("none", ""):
            return cls(())
        entries: list[int | str] = []
        for raw in t.split(","):
            item = raw.strip()
            if not item:
                raise ValueError(f"empty entry in GPU list {text!r}")
            entry: int | str
            if item.isdigit():
                if int(item) > 1024:
                    raise ValueError(f"GPU index {item} is out of range")
                entry = int(item)
            elif item.upper().startswith("MIG-"):
                raise ValueError(f"{item!r}: MIG instances are not supported; name the GPU")
            elif item.upper().startswith("GPU-"):
                prefix = item[4:]
                if len(prefix) < MIN_UUID_PREFIX or not all(
                    c in "0123456789abcdefABCDEF-" for c in prefix
                ):
                    raise ValueError(
                        f"{item!r} is not a GPU UUID (GPU-xxxxxxxx-..., at least "
                        f"{MIN_UUID_PREFIX} hex digits)"
                    )
                entry = "gpu-" + prefix.lower()
            else:
                raise ValueError(
                    f"{item!r} is neither a GPU index nor a GPU UUID (as in CUDA_VISIBLE_DEVICES)"
                )
            if entry in entries:
                raise ValueError(f"GPU {item!r} is listed twice in {text!r}")
            entries.append(entry)
        return cls(tuple(entries))

    def __str__(self) -> str:
        if self.entries is None:
            return "all"
        return ",".join(str(e) for e in self.entries) or "none"

    def select(self, gpus: Sequence[GpuStats]) -> tuple[tuple[GpuStats, ...], tuple[str, ...]]:
        """The selected GPUs in the selection's order, and what did not match.

        An entry matching no GPU, or a UUID prefix matching several, selects nothing and
        is reported as a problem (the caller logs it); the other entries still apply.
        """
        if self.entries is None:
            return tuple(gpus), ()
        out: list[GpuStats] = []
        problems: list[str] = []
        for e in self.entries:
            if isinstance(e, int):
                hits = [g for g in gpus if g.index == e]
            else:
                hits = [g for g in gpus if g.uuid.lower().startswith(e)]
            if len(hits) == 1:
                if hits[0] not in out:
                    out.append(hits[0])
            elif not hits:
                problems.append(f"no GPU {e}")
            else:
                problems.append(f"{e} matches {len(hits)} GPUs")
        return tuple(out), tuple(problems)


class SelectedGpus:
    """The GPUs of one model server, out of a source that reads all of the node's GPUs."""

    def __init__(self, source: GpuSource, selection: GpuSelection) -> None:
        self.source = source
        self.selection = selection
        self._said: tuple[str, ...] = ()

    def read(self) -> tuple[GpuStats, ...]:
        gpus = self.source.read()
        picked, problems = self.selection.select(gpus)
        if gpus and problems != self._said:
            self._said = problems
            if problems:
                known = ", ".join(f"{g.index}={g.uuid}" for g in gpus)
                log.warning("GPU selection %s: %s (GPUs: %s)", self.selection, problems, known)
        return picked

    def clear_faults(self, before: float) -> list[str]:
        clear = getattr(self.source, "clear_faults", None)
        return list(clear(before)) if callable(clear) else []


def parse_server_gpus(values: Iterable[str] | None) -> dict[int, GpuSelection]:
    """``--server-gpus PORT=SELECTION`` flags -> {port: selection}; ``ValueError`` if bad."""
    out: dict[int, GpuSelection] = {}
    for v in values or ():
        port_s, sep, sel = v.partition("=")
        if not sep or not port_s.strip().isdigit():
            raise ValueError(f"--server-gpus expects PORT=GPUS (e.g. 8001=0,1), got {v!r}")
        port = int(port_s)
        if port in out:
            raise ValueError(f"--server-gpus names port {port} twice")
        try:
            out[port] = GpuSelection.parse(sel)
        except ValueError as e:
            raise ValueError(f"--server-gpus {v!r}: {e}") from None
    return out
