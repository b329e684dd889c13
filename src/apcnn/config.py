"""Typed configuration: nested dataclasses, YAML files and ``key=value`` overrides.

Precedence (lowest to highest)::

    dataclass defaults  <  YAML file  <  overrides ["data.root=/x", "mtl.mu=0.1", ...]

Values are parsed with a YAML 1.2-style loader (only ``true``/``false`` are booleans, so
``train.amp=off`` stays the string ``"off"``) and then checked and coerced against the annotated
field types: ``bool``, ``int``, ``float``, ``str``, ``Optional[...]``, ``Literal[...]``, unions,
``list[...]``, ``dict[str, ...]`` and nested dataclasses. Every problem raises :class:`ConfigError`
with one line that names the key and the fix::

    unknown key 'mtl.mu2' in overrides (valid keys in 'mtl': mu, gamma, ...); did you mean 'mtl.mu'?
    'mtl.mu' expects float, got 'abc' (str) in overrides
    'mtl.loss' expects one of 'squared_hinge', 'hinge', 'logistic', got 'hing' in cfg.yaml

The project's training configuration is :class:`TrainConfig` (sections ``data``, ``model``,
``mtl``, ``train``, ``run``). Its presets are YAML files shipped inside the package
(``apcnn/configs/NAME.yaml``; ``configs/`` in a source checkout links there): :func:`preset_path`,
:func:`list_presets`. Keys that were removed (:data:`REMOVED_KEYS`) are refused with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "MTLConfig",
    "TrainLoopConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "parse_override",
    "preset_path",
    "list_presets",
    "preset_settings",
    "REMOVED_KEYS",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "check_data_root",
    "DATASETS_WITHOUT_ROOT",
    "config_keys",
    "field_help",
]

T = TypeVar("T")


# --------------------------------------------------------------------------- YAML 1.2-ish loader
class _Loader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans and ``1e-4`` is a float (YAML 1.2 core)."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


from .config_schema import (  # noqa: E402  (the schema; this module adds files and overrides)
    DATASETS_WITHOUT_ROOT,
    REMOVED_KEYS,
    ConfigError,
    DataConfig,
    ModelConfig,
    MTLConfig,
    RunConfig,
    TrainConfig,
    TrainLoopConfig,
    check_data_root,
)


def _removed(cls: type, prefix: str, key: Any) -> str | None:
    """The reason ``prefix.key`` was removed, if ``cls`` is TrainConfig's section ``prefix``."""
    dotted = _join(prefix, key)
    if dotted in REMOVED_KEYS and _hints(TrainConfig).get(prefix) is cls:
        return REMOVED_KEYS[dotted]
    return None


def _drop_removed(cls: type, d: Any) -> Any:
    """A copy of the (TrainConfig-shaped) mapping ``d`` without the keys of REMOVED_KEYS."""
    if cls is not TrainConfig or not isinstance(d, Mapping):
        return d
    out = dict(d)
    for dotted in REMOVED_KEYS:
        section, name = dotted.split(".")
        if isinstance(out.get(section), Mapping) and name in out[section]:
            out[section] = {k: v for k, v in out[section].items() if k != name}
    return out


# ---------------------------------------------------------------------------- type coercion core
class _Mismatch(Exception):
    """Internal: value does not fit a type (message: the expected type)."""


_NoneType = type(None)
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any"
    if tp is _NoneType:
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against ``tp`` and convert it; raise ConfigError naming ``key``."""
    try:
        return _convert(value, tp, key, source)
    except _Mismatch:
        extra = ""
        if typing.get_origin(tp) is Literal and isinstance(value, str):
            choices = [str(a) for a in typing.get_args(tp)]
            close = difflib.get_close_matches(value, choices, n=1)
            if close:
                extra = f"; did you mean {close[0]!r}?"
        raise ConfigError(
            f"'{key}' expects {_type_name(tp)}, got {_show(value)}{_where(source)}{extra}"
        ) from None


def _where(source: str) -> str:
    return f" in {source}" if source else ""


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            if _NoneType in args:
                return None
            raise _Mismatch
        members = [a for a in args if a is not _NoneType]
        # an exact match wins (str | int keeps 3 as int and "3" as str), then coercion in order
        for a in members:
            if _exact(value, a):
                return _convert(value, a, key, source)
        for a in members:
            if a is str:  # inside a union only real strings are strings (str | int: 1.5 fails)
                continue
            try:
                return _convert(value, a, key, source)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        for a in args:
            if value == a and type(value) is type(a):
                return a
        raise _Mismatch
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _Mismatch
        return _from_dict(tp, value, key, source)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _Mismatch
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (a, v) in pairs)
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, _join(key, k), source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    raise ConfigError(f"'{key}' has an unsupported annotation {tp!r}; use basic types")


def _exact(value: Any, tp: Any) -> bool:
    """Whether ``value`` already is a ``tp`` without any conversion."""
    if tp is Any:
        return True
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):
        return isinstance(value, tp) and not isinstance(value, bool)
    if typing.get_origin(tp) is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return isinstance(value, tp)
    origin = typing.get_origin(tp)
    return origin is not None and isinstance(origin, type) and isinstance(value, origin)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(cls: type, prefix: str, key: Any, source: str) -> ConfigError:
    reason = _removed(cls, prefix, key)
    if reason is not None:
        return ConfigError(
            f"'{_join(prefix, key)}' was removed{_where(source)}: {reason}; delete the key"
        )
    valid = [f.name for f in dataclasses.fields(cls)]
    where = f"in '{prefix}'" if prefix else "at the top level"
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f"; did you mean '{_join(prefix, close[0])}'?" if close else ""
    return ConfigError(
        f"unknown key '{_join(prefix, key)}'{_where(source)} "
        f"(valid keys {where}: {', '.join(valid)}){hint}"
    )


def _from_dict(cls: type[T], d: Mapping[str, Any], prefix: str, source: str) -> T:
    if not isinstance(d, Mapping):
        what = f"'{prefix}'" if prefix else "the configuration"
        raise ConfigError(f"{what} must be a mapping of keys, got {_show(d)}{_where(source)}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k not in names:
            raise _unknown_key(cls, prefix, k, source)
        kwargs[k] = _coerce(v, hints[k], _join(prefix, k), source)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{e}{_where(source)}") from None
    except TypeError as e:  # a field without default left out
        raise ConfigError(f"'{prefix or cls.__name__}': {e}{_where(source)}") from None


# ---------------------------------------------------------------------------------- public API
def config_from_dict(cls: type[T], d: Mapping[str, Any], *, source: str = "") -> T:
    """Build ``cls`` from a (partial) nested mapping; missing keys take their defaults.

    This reads stored configurations (checkpoints, run folders): the keys of
    :data:`REMOVED_KEYS` are dropped, so those written before a key was removed still load.

    Raises:
        ConfigError: unknown key, wrong type or invalid value (one line, naming the key).
    """
    return _from_dict(cls, _drop_removed(cls, d), "", source)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The configuration as plain nested dicts/lists/scalars (JSON and YAML serialisable)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(cfg).__name__}")

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (readable back by :func:`load_config`)."""
    from apcnn.runlog import atomic_write_bytes

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    return atomic_write_bytes(Path(path), text.encode("utf-8"))


def parse_override(
    item: str, *, what: str = "override", example: str = "mtl.mu=0.1"
) -> tuple[str, str]:
    """Split ``"key=value"`` at the first ``=`` into (key without surrounding spaces, raw value).

    The one ``key=value`` parser of the project (``--set``, ``--option``, ``apcnn reproduce``);
    the value stays text: :func:`load_config` parses it against the key's type.

    Raises:
        ConfigError: no ``=``, or an empty key or dotted part (``a..b``); the message names
            ``what`` (e.g. ``"--option"``) and shows ``example``.
    """
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"{what} {item!r} must look like key=value, e.g. {example}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{what} {item!r} has an empty key; write e.g. {example}")
    return key, raw


def _resolve(cls: type, key: str, source: str) -> tuple[list[str], Any]:
    """Walk dotted ``key`` through the dataclass tree; returns (parts, annotated type)."""
    parts = key.split(".")
    tp: Any = cls
    prefix = ""
    for i, part in enumerate(parts):
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            hints = _hints(tp)
            if part not in hints:
                raise _unknown_key(tp, prefix, part, source)
            tp = hints[part]
        elif tp is Any or _is_mapping_type(tp):
            args = () if tp is Any else typing.get_args(_strip_optional(tp))
            tp = args[1] if len(args) == 2 else Any
        else:
            raise ConfigError(
                f"'{prefix}' is a {_type_name(tp)}, it has no key '{'.'.join(parts[i:])}'"
                f"{_where(source)}"
            )
        prefix = _join(prefix, part)
    return parts, tp


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not _NoneType]
        if len(rest) == 1:
            return rest[0]
    return tp


def _is_mapping_type(tp: Any) -> bool:
    tp = _strip_optional(tp)
    return tp in (dict, Mapping) or typing.get_origin(tp) in (dict, Mapping)


def _is_text_type(tp: Any) -> bool:
    """str, a Literal of strings, or Optional of one of those: the raw text is the value."""
    tp = _strip_optional(tp)
    if tp is str:
        return True
    if typing.get_origin(tp) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    return False


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and _NoneType in typing.get_args(tp)


def _parse_value(raw: str, tp: Any, key: str, source: str) -> Any:
    text = raw.strip()
    if _optional(tp) and text in ("", "null", "None", "~"):
        return None
    if _is_text_type(tp) and not (len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""):
        return raw  # the text itself ("off", "1e-4", "2024" stay strings); quoted text is YAML
    try:
        return _yaml_load(raw) if text else ""
    except yaml.YAMLError as e:
        msg = str(e).replace("\n", " ")
        raise ConfigError(f"'{key}': cannot parse {raw!r}{_where(source)}: {msg}") from None


def _set(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None or not isinstance(nxt, Mapping) else dict(nxt)
            node[p] = nxt
        node = nxt
    if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), Mapping):
        node[parts[-1]] = _merge(node[parts[-1]], value)
    else:
        node[parts[-1]] = value


def _merge(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _apply(cls: type, tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    if isinstance(overrides, str):
        raise ConfigError("overrides must be a list of 'key=value' strings, not one string")
    source = "overrides"
    for item in overrides:
        key, raw = parse_override(item)
        parts, tp = _resolve(cls, key, source)
        value = _parse_value(raw, tp, key, source)
        _coerce(value, tp, key, source)  # type error now, naming this override
        _set(tree, parts, value)
    return tree


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults < YAML file at ``path`` < ``key=value`` overrides -> a ``cls`` instance.

    Args:
        cls: the dataclass type (e.g. :class:`TrainConfig`).
        path: a YAML mapping, partial (omitted keys keep their defaults), or None.
        overrides: ``"section.key=value"`` strings; values are YAML (``mtl.mu=0.1``,
            ``data.options={split: a}``); for ``str``/``Literal`` fields the raw text is used.

    Raises:
        ConfigError: unknown key, wrong type, invalid value, unparsable YAML.
        FileNotFoundError: ``path`` does not exist.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} not found; pass an existing YAML file")
        try:
            loaded = _yaml_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            msg = " ".join(str(e).split())
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {msg}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"config file {str(p)!r} is not valid UTF-8 (byte 0x{e.object[e.start]:02x} at "
                f"offset {e.start}); save it as UTF-8"
            ) from None
        if loaded is None:
            loaded = {}
        _from_dict(cls, loaded, "", str(p))  # report file errors with the file name
        tree = copy.deepcopy(dict(loaded))
    _apply(cls, tree, overrides)
    return _from_dict(cls, tree, "", "overrides" if overrides else "")


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """A copy of ``cfg`` with ``key=value`` overrides applied (e.g. on resume)."""
    cls = type(cfg)
    tree = _apply(cls, config_to_dict(cfg), overrides)
    return config_from_dict(cls, tree, source="overrides")


# ------------------------------------------------------------------------------------ presets
def _presets_dir() -> Path:
    """The folder of the packaged presets, ``apcnn/configs`` (installed as plain files)."""
    from importlib.resources import files

    return Path(str(files("apcnn") / "configs"))


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (``apcnn/configs/NAME.yaml``), sorted."""
    return sorted(p.stem for p in _presets_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The packaged YAML file of preset ``name`` (e.g. ``"clothing"``), for :func:`load_config`.

    In a source checkout ``configs/`` links to the same folder (``configs/NAME.yaml``).

    Raises:
        ConfigError: no preset of that name (the message lists the presets).
    """
    path = _presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r}; the presets are: {', '.join(list_presets())}")
    return path


def preset_settings(name: str) -> dict[str, Any]:
    """The keys preset ``name`` sets, flat: ``{"section.key": value}`` (values as in the file).

    E.g. ``preset_settings("clothing")["train.adapt_blocks"] == 5``.
    """
    tree = _yaml_load(preset_path(name).read_text(encoding="utf-8")) or {}
    return {
        f"{section}.{key}": value for section, keys in tree.items() for key, value in keys.items()
    }


# ------------------------------------------------------------------------- documentation of keys
_FIELD_LINE = re.compile(r"^    (\w+): ")


def field_help(cls: type) -> dict[str, str]:
    """``{field: meaning}`` of a config dataclass, from its ``#:`` comments (Sphinx style).

    A field's meaning is the ``#:`` comment lines just above it plus a trailing ``#:`` comment
    on its own line, joined into one sentence; these comments are the one source of the key
    documentation (``apcnn config show``), so every field of :class:`TrainConfig` has one.
    """
    import inspect

    names = {f.name for f in dataclasses.fields(cls)}
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):  # no source (e.g. a frozen app): no help, never a failure
        return {}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if line.startswith("    #:"):
            above.append(stripped[2:].strip())
            continue
        match = _FIELD_LINE.match(line)
        if match and match.group(1) in names and match.group(1) not in out:
            _, sep, trailing = line.partition("  #:")
            parts = [*above, trailing.strip()] if sep else above
            out[match.group(1)] = " ".join(p for p in parts if p)
        above = []
    return out


def config_keys(preset: str | None = None) -> list[dict[str, Any]]:
    """Every key of :class:`TrainConfig`, in file order, as ``{"key", "type", "value", "default",
    "set_by_preset", "help"}``; ``value`` is the preset's (its YAML merged over the defaults) or
    the default. For ``apcnn config show [PRESET]``."""
    cfg = load_config(TrainConfig, preset_path(preset)) if preset else TrainConfig()
    defaults = config_to_dict(TrainConfig())
    values = config_to_dict(cfg)
    set_keys = set(preset_settings(preset)) if preset else set()
    rows = []
    for section in dataclasses.fields(TrainConfig):
        cls = _hints(TrainConfig)[section.name]
        hints, helps = _hints(cls), field_help(cls)
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            rows.append(
                {
                    "key": key,
                    "type": _type_name(hints[f.name]),
                    "value": values[section.name][f.name],
                    "default": defaults[section.name][f.name],
                    "set_by_preset": key in set_keys,
                    "help": helps.get(f.name, ""),
                }
            )
    return rows
