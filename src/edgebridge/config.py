"""TOML configuration loaded into validated, frozen config dataclasses.

``load_config(path, Cls)`` reads a TOML file and builds ``Cls`` (nested dataclasses allowed);
``loads_config(text, Cls, name)`` does the same from a string and ``from_dict(Cls, data)`` from a dict
(no file: benchmarks and fuzz tests load setups this way). Every problem raises one ``ConfigError`` whose
single line names the file and the dotted key, e.g. ``robot.toml: loop.rate_hz = inf: must be a finite
number``:

- a file that is missing, unreadable, not UTF-8 or not TOML;
- an unknown key (the message names the nearest valid one), a missing required key;
- a wrong type: a table where a number belongs or the reverse, ``true`` for a number, ``1`` for a flag;
- a non-finite number (``inf``, ``nan``) anywhere, also inside pass-through ``options`` tables: no time,
  rate or limit of a setup may be infinite;
- a value the dataclass' ``__post_init__`` rejects (ranges, shapes, consistency).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to one short line for an error message."""
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


_PLAIN = frozenset({str, int, bool, type(None)})


def _bad_float(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def check_finite_tree(value: Any, key: str) -> None:
    """Raise ``ConfigError`` naming the first non-finite float in ``value`` (a number, or tables and
    lists of them, walked recursively; nested dataclasses validate themselves and are skipped)."""
    if type(value) in _PLAIN:
        return
    if type(value) is tuple and all(type(v) is float for v in value) and all(map(math.isfinite, value)):
        return  # the common case: a vector of limits
    if _bad_float(value):
        raise ConfigError(f"{key} = {value!r}: must be a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite_tree(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite_tree(v, f"{key}[{i}]")


def check_finite_fields(obj: Any) -> None:
    """For ``__post_init__``: every float of dataclass ``obj`` (fields, their items, pass-through tables)
    must be finite; the error names the field. Covers configs built in code, not only loaded ones."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not dataclasses.is_dataclass(value):
            check_finite_tree(value, f.name)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> tuple[dict, dict]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    return typing.get_type_hints(cls), fields


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if tp is float and type(value) is float and math.isfinite(value):
        return value  # the common case first
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        check_finite_tree(value, key)
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: unexpected value {_show(value)}")
    if origin is typing.Literal:
        bool_mix = isinstance(value, bool) and not any(a is value for a in args)  # true is not 1
        if isinstance(value, (dict, list)) or bool_mix or value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {_show(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__} {_show(value)}")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {_show(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__} {_show(value)}")
        check_finite_tree(value, key)
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {_show(value)}")
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            raise ConfigError(f"{key} = {_show(value)}: must be a finite number")
        return x
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {_show(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {_show(value)}")
        return value
    check_finite_tree(value, key)
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a dict, naming the dotted key of any problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a table, got {type(data).__name__}")
    hints, fields = _hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        bad = min(unknown, key=str)
        near = difflib.get_close_matches(str(bad), list(fields), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(f"{prefix}{bad}: unknown key; {hint}known keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, ArithmeticError) as e:  # ConfigError is a ValueError: add the table's prefix
        msg = str(e)
        raise ConfigError(msg if not prefix or msg.startswith(prefix) else f"{prefix}{msg}") from e


def _parse(text: str, name: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{name}: not valid TOML ({e})") from e
    except RecursionError as e:
        raise ConfigError(f"{name}: not valid TOML (nested too deeply)") from e


def _build(data: dict, cls: type[T], name: str) -> T:
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from e


def loads_config(text: str, cls: type[T], name: str = "<string>") -> T:
    """Build ``cls`` from TOML ``text``; errors start with ``name`` (a file name, or ``<string>``)."""
    if not isinstance(text, str):
        raise ConfigError(f"{name}: expected TOML text (str), got {type(text).__name__}")
    return _build(_parse(text, name), cls, name)


def load_config(path: str | Path, cls: type[T]) -> T:
    """Load a TOML file into ``cls``; errors name the file and the key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          "save the file as UTF-8") from e
    return _build(_parse(text, str(path)), cls, path.name)


def check(cond: bool, key: str, why: str) -> None:
    """Raise ``ConfigError(key: why)`` unless ``cond``; for use in ``__post_init__``."""
    if not cond:
        raise ConfigError(f"{key}: {why}")
