"""Whole-config validation: every settings problem of a run reported in one message.

jsonargparse builds the settings dataclasses one at a time and stops at the first whose
`__post_init__` raises. `config_problems` builds each of them from the parsed config first and
collects every message, so a config with a negative LR, rank 0 and an invalid regex fails at
start with all three listed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any


def _plain(value: Any) -> Any:
    """A jsonargparse Namespace (or nested ones) as plain dicts."""
    return value.as_dict() if hasattr(value, "as_dict") else value


def build(tp: Any, value: Any) -> Any:
    """Build `tp` from plain data: dataclasses from dicts, recursively through lists and unions."""
    value = _plain(value)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: build(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.name in value})
    origin = typing.get_origin(tp)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [build(item, v) for v in value]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return build(arg, value)
    return value


def config_problems(init: Callable, section: Any, prefix: str) -> list[str]:
    """Messages of every dataclass argument of `init` that fails to build from `section`.

    Args:
        init: a constructor whose type hints name the settings dataclasses (e.g. OnlineLM.__init__).
        section: the parsed config section for it (a Namespace or dict).
        prefix: the flag prefix used in messages, e.g. "model".
    """
    section = _plain(section) or {}
    problems = []
    for name, tp in typing.get_type_hints(init).items():
        if name in section and section[name] is not None and _holds_dataclass(tp):
            problems += build_problems(tp, section[name], f"{prefix}.{name}")
    return problems


def build_problems(tp: Any, value: Any, flag: str) -> list[str]:
    """[] if `tp` builds from `value`, else the error message prefixed with the flag."""
    try:
        build(tp, value)
    except (ValueError, TypeError) as err:
        return [f"--{flag}: {err}"]
    return []


def _holds_dataclass(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) or any(dataclasses.is_dataclass(a) for a in typing.get_args(tp))
