"""Build a config dataclass from untyped values (YAML, the command line) or say which key is wrong.

Hydra hands the command line over as whatever YAML makes of it (`H_cycles=abc` is the string "abc"),
and dataclasses check nothing, so a typo'd key would be dropped and a wrong type would fail deep in
the maths. `typed` refuses both up front: `<where>.<key>: 'abc' is not int`, or the unknown keys with
the valid ones listed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def check_keys(values: Mapping[str, Any], valid: typing.Iterable[str], where: str) -> None:
    """Refuse keys outside `valid`, listing the valid ones."""
    valid = sorted(valid)
    if unknown := sorted(set(values) - set(valid)):
        keys = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise ValueError(f"{keys}: unknown key{'s' if len(unknown) > 1 else ''}; valid keys{f' of {where}' if where else ''}: {', '.join(valid)}")


def typed(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """cls(**values) after checking every key is a field of cls and every value has its field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(values, fields, where)
    hints = typing.get_type_hints(cls)
    converted = {k: coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    try:
        return cls(**converted)
    except (TypeError, ValueError) as err:  # __post_init__ checks
        raise ValueError(f"{where}: {err}") from None


def coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint` (int, float, str, bool, X | None, tuple[...] / list[...]), else a ValueError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ValueError:
                pass
        raise ValueError(f"{key}: {value!r} is not {type_name(hint)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: {value!r} is not {type_name(hint)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{key}: {value!r} is not {type_name(hint)}")
            items = [coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return origin(items)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # `variant=3`: a label
            return str(value)
    elif hint is Any or isinstance(value, hint):
        return value
    raise ValueError(f"{key}: {value!r} is not {type_name(hint)}")


def type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint)) if not typing.get_args(hint) else str(hint)
