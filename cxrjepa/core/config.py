"""Typed configuration: dataclasses, YAML files and dotted overrides.

Precedence (lowest first): the dataclass defaults < ``--config`` YAML files, in the order given <
``--set a.b=value`` overrides, in the order given. Unknown keys are errors with a did-you-mean; values are
checked and converted against the field types, so ``--set optim.lr=3e-4`` gives a float and
``--set model.size=tiny`` is checked against the allowed names.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from cxrjepa.core.errors import ConfigError

T = TypeVar("T")


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'X'?`` for the closest of ``choices`` to a mistyped ``key`` (empty when none is close)."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it where that is lossless."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"'{where}' cannot be empty.")
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        raise ConfigError(
            f"'{where}' must be one of {', '.join(map(str, allowed))}, not '{value}'."
            + did_you_mean(str(value), map(str, allowed))
        )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping of settings, not '{value}'.")
        return from_dict(tp, value, prefix=where)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            # "a,b,c" from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"'{where}' needs {len(args)} values, got {len(value)}.")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{where}' must be a mapping, not '{value}'.")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"'{where}' must be true or false, not '{value}'.")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be an integer, not '{value}'.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"'{where}' must be an integer, not '{value}'.")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, not '{value}'.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{where}' must be a number, not '{value}'.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"'{where}' must be a text value, not '{value}'.")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"'{where}' must be a path, not '{value}'.")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"'{where}' has an unsupported value '{value}' (expected {_type_name(tp)}).")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _field_default(fld: dataclasses.Field) -> Any:
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    if fld.default is not dataclasses.MISSING:
        return fld.default
    return None


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a (possibly partial) mapping; unknown keys are errors."""
    fields = _fields(cls)
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"Unknown setting '{where}'." + did_you_mean(str(key), fields))
        fld, tp = fields[key]
        if isinstance(value, Mapping) and dataclasses.is_dataclass(tp):
            # a partial section keeps the field's own defaults (its default_factory), not the bare class's
            default = _field_default(fld)
            if dataclasses.is_dataclass(default) and not isinstance(default, type):
                value = deep_merge(to_dict(default), value)
        kwargs[key] = _coerce(value, tp, where)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field without default
        raise ConfigError(f"Settings '{prefix or cls.__name__}' are incomplete: {exc}.") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> Any:
    """A plain, YAML-safe dict of a config dataclass (paths become strings, tuples lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def deep_merge(base: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``other`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value) with the value read as a YAML scalar."""
    if "=" not in text:
        raise ConfigError(f"Override '{text}' must look like key=value (for example optim.lr=3e-4).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"Override '{text}' has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def overrides_to_dict(overrides: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if not isinstance(nxt, dict):
                nxt = node[k] = {}
            node = nxt
        node[keys[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"Config file '{path}' is not valid YAML{where}.") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"Config file '{path}' must hold a mapping of settings at its top level.")
    return dict(data)


def load_config(
    cls: type[T],
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    layers: Sequence[Mapping[str, Any]] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Resolve a config: defaults < ``layers`` < YAML ``files`` < ``flags`` < ``key=value`` ``overrides``.

    ``layers`` are mappings supplied by code (a pipeline's stage params); they sit below the files so a
    user's ``--config`` still wins over a pipeline's params. ``flags`` are the CLI options the user typed
    that map onto settings (``--size 256`` is ``size=256``); ``None`` values in it are ignored.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    for f in files:
        merged = deep_merge(merged, read_yaml(f))
    if flags:
        merged = deep_merge(merged, _drop_none(flags))
    merged = deep_merge(merged, overrides_to_dict(overrides))
    return from_dict(cls, merged)


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(to_dict(data), sort_keys=False, default_flow_style=False, allow_unicode=True)
