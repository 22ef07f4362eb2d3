"""Typed configs: dataclasses filled from a YAML file plus ``key=value`` overrides.

Every command of rlxf has one config dataclass. Fields are declared with :func:`option`, which keeps the
help text beside the field (the same text ``--help`` prints). Nested dataclasses give dotted keys
(``model.dtype=bfloat16``). Loading checks, before anything heavy happens:

* every key exists (an unknown key is an error that suggests the nearest valid one);
* every value has the declared type (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``,
  ``list[...]``, ``X | None`` and nested dataclasses);
* the dataclasses' own ``__post_init__`` checks (ranges, combinations of options).

Renamed keys. A config class may declare ``renamed_keys: ClassVar[dict[str, str]]`` (old key -> its new
dotted key, e.g. ``{"learning_rate": "train.learning_rate"}``): for one release the old key still works,
its value moved to the new place with a deprecation message (a ``DeprecationWarning`` and a warning on
the ``rlxf`` logger); giving both is an error. An old key whose value needs converting rather than moving
is also listed in ``renamed_conversions: ClassVar[dict[str, Callable[[config, old_value], new_value]]]``:
the config is built without it, the function computes the new key's value from that config, and the
config is built again with it (e.g. RL's ``warmup_steps`` count -> ``train.warmup_ratio``).

This module knows nothing of models or training; every layer of the package uses it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and what was expected."""


def option(
    default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING
) -> Any:
    """A dataclass field with its help text (shown by ``--help`` and in :func:`describe`)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    # get_type_hints resolves the string annotations that `from __future__ import annotations` leaves.
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list[{_type_name(inner)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless (int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in allowed)}.{extra}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        if isinstance(value, str | int | float) and not isinstance(value, bool) and inner is not Any:
            value = [value]  # a single value where a list is expected: `stop=Human:` means ["Human:"]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(inner)}, got {value!r}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if _is_dataclass_type(tp):
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} options, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads `1e-5` (no dot) as a string; it is a number to anyone writing it
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # `--seed`-like strings typed as numbers in YAML, e.g. a prompt "1984"
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _unknown_key(cls: type, name: str, prefix: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    everywhere = [key for key, *_ in describe(cls)]
    # A nested option given at the wrong level (`schedule` for `optim.schedule`) beats a look-alike here.
    hint = [key for key in everywhere if key.endswith("." + name)][:1]
    hint = hint or difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = hint or difflib.get_close_matches(name, everywhere, n=1, cutoff=0.6)
    suggestion = f" Did you mean {prefix}{hint[0]}?" if hint else ""
    return ConfigError(
        f"unknown config key {prefix}{name} for {cls.__name__}.{suggestion} Valid keys here: {', '.join(valid)}."
    )


def _get_dotted(tree: Mapping[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` in a nested mapping, or ``dataclasses.MISSING``."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return dataclasses.MISSING
        node = node[part]
    return node


def _pop_dotted(tree: dict[str, Any], dotted: str) -> None:
    """Remove the value at ``dotted`` from a nested dict, if there is one."""
    *parents, last = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def _deprecated(cls: type, prefix: str, old: str, new: str, note: str = "") -> None:
    message = (
        f"{cls.__name__}: `{prefix}{old}` is deprecated and will be removed in the next release; "
        f"write `{prefix}{new}`{note}"
    )
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    logger.warning(message)


def _move_renamed_keys(
    cls: type, values: Mapping[str, Any], prefix: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Move the values of ``cls.renamed_keys`` to their new keys; return the values and, apart, the old
    keys whose value ``cls.renamed_conversions`` converts (those are applied once the config is built)."""
    renamed: dict[str, str] = getattr(cls, "renamed_keys", {})
    conversions = getattr(cls, "renamed_conversions", {})
    if not any(old in values for old in renamed):
        return dict(values), {}
    moved = copy.deepcopy(dict(values))
    to_convert: dict[str, Any] = {}
    for old, new in renamed.items():
        if old not in moved:
            continue
        if _get_dotted(moved, new) is not dataclasses.MISSING:
            raise ConfigError(
                f"{prefix}{old} and {prefix}{new} are both given: {prefix}{old} is the deprecated name of "
                f"{prefix}{new}; keep only {prefix}{new}"
            )
        value = moved.pop(old)
        if old in conversions:
            to_convert[old] = value
            continue
        _deprecated(cls, prefix, old, new)
        set_dotted(moved, new, value)
    return moved, to_convert


def _build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    values, to_convert = _move_renamed_keys(cls, values, prefix)
    cfg = _construct(cls, values, prefix)
    if not to_convert:
        return cfg
    for old, old_value in to_convert.items():
        new = cls.renamed_keys[old]  # type: ignore[attr-defined]
        try:
            new_value = cls.renamed_conversions[old](cfg, old_value)  # type: ignore[attr-defined]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{prefix}{old}: {exc}") from exc
        _deprecated(cls, prefix, old, new, f" (here {prefix}{new}={new_value!r})")
        set_dotted(values, new, new_value)
    return _construct(cls, values, prefix)


def _construct(cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in names:
            raise _unknown_key(cls, str(name), prefix)
        tp = types_[name]
        factory = fields[name].default_factory
        if _is_dataclass_type(tp) and isinstance(value, Mapping) and factory is not dataclasses.MISSING:
            # A section given in part keeps the other values of its declared default, which may differ
            # from the section class's own defaults (e.g. a learner's own learning rate); a renamed key
            # given under its old name replaces the default of its new one.
            defaults = dataclasses.asdict(factory())
            for old, new in getattr(tp, "renamed_keys", {}).items():
                if old in value:
                    _pop_dotted(defaults, new)
            value = merge(defaults, value)
        kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # __post_init__ checks
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["model.dtype=bfloat16", "lr=1e-5"]`` -> nested dict. Values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict) or (isinstance(value, str) and not raw.strip().startswith(("'", '"'))):
            value = raw  # plain text stays as typed (`stop=Human:` is a string, not a YAML mapping)
        set_dotted(nested, key, value)
    return nested


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two nested dicts; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> T:
    """Build ``cls`` from an optional YAML file, then overrides (``key=value`` strings or a nested dict)."""
    values: dict[str, Any] = read_yaml(path) if path else {}
    if isinstance(overrides, Mapping):
        values = merge(values, overrides)
    else:
        values = merge(values, parse_overrides(overrides))
    try:
        return _build(cls, values)
    except ConfigError as exc:
        if path:
            raise ConfigError(f"{exc} (config file {path})") from exc
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """All options of a config class as ``(dotted key, type, default, help)``, nested ones flattened."""
    rows: list[tuple[str, str, Any, str]] = []
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if _is_dataclass_type(tp):
            # A section's defaults are those of its declared default (a learner's own learning rate),
            # which may differ from the section class's own.
            section = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            for key, type_name, default, help_text in describe(tp):
                if section is not None:
                    default = section
                    for part in key.split("."):
                        default = getattr(default, part)
                rows.append((f"{f.name}.{key}", type_name, default, help_text))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        rows.append((f.name, _type_name(tp), default, f.metadata.get("help", "")))
    return rows
