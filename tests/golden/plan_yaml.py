"""Golden case files (YAML) -> ``controlplane.ir.Plan``.

The YAML mirrors the IR dataclasses field by field, so a new IR field with a default
needs no change here. Unknown keys are errors (a typo must not silently fall back to a
default). Two conveniences: a cluster's ``name`` defaults to ``cluster_name(model,
version)``, and pairs such as ``versions`` are written as two-element lists.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from controlplane.ir import ClusterIR, Plan, cluster_name


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} items, got {value!r}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is float and isinstance(value, int):
        return float(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    if isinstance(tp, types.UnionType):
        raise ValueError(f"{where}: union types are not supported")
    return value


def _dataclass(cls: type[Any], value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {value!r}")
    if cls is ClusterIR and "name" not in value:
        value = {**value, "name": cluster_name(value["model"], value["version"])}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys for {cls.__name__}: {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in value.items()}
    return cls(**kwargs)


def load_plan(path: Path) -> Plan:
    """Read one golden case: a mapping with ``clusters``, ``route_configs``, ``listeners``."""
    data = yaml.safe_load(path.read_text())
    plan: Plan = _dataclass(Plan, data, path.name)
    return plan
