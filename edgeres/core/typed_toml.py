"""Strict TOML -> frozen dataclass loading, shared by targets and recipes.

Foundation layer: standard library only.  Unknown keys, wrong types and
values outside a field's choices are errors that name the file, the key and
what is allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeres.core.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Check = Callable[[Any, str, Path, str], None]


def read_toml(path: Path, kind: str) -> dict:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {kind} {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{kind} {path} is not valid TOML: {exc}") from None


def resolve_toml(spec: str, folder: Path, noun: str) -> Path:
    """The TOML file ``spec`` names: a path (has a suffix .toml or a separator), or a bundled name in ``folder``."""
    path = Path(spec)
    if path.suffix == ".toml" or "/" in spec or "\\" in spec:  # a file, not a bundled name
        if not path.is_file():
            raise UsageError(f"{noun} file {path} does not exist")
        return path
    bundled = folder / f"{spec}.toml"
    if not bundled.is_file():
        names = ", ".join(p.stem for p in sorted(folder.glob("*.toml")))
        raise UsageError(f"unknown {noun} '{spec}'; known: {names} (or a path to a .toml file)")
    return bundled


def load_typed(cls, path: Path, kind: str, choices: dict | None = None, checks: dict[str, Check] | None = None):
    """Read ``path`` into ``cls``; ``name`` defaults to the file's stem and ``path`` is recorded."""
    path = Path(path)
    data = read_toml(path, kind)
    data.setdefault("name", path.stem)
    return dataclasses.replace(build_typed(cls, data, path, kind=kind, choices=choices, checks=checks),
                               path=str(path))


def build_typed(cls, data: dict, path: Path, section: str = "", *, kind: str,
                choices: dict[tuple[str, str], tuple] | None = None, checks: dict[str, Check] | None = None):
    """``cls(**data)`` after checking every key, type and choice; nested dataclasses are TOML tables."""
    choices, checks = choices or {}, checks or {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{section}] " if section else ""
        raise UsageError(f"{kind} {path}: unknown key {where}'{unknown[0]}'; allowed: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = ""  # required string fields (name)
        key = f"{section}.{name}" if section else name
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise UsageError(f"{kind} {path}: '{key}' must be a [{name}] table")
            kwargs[name] = build_typed(type(default), value, path, name, kind=kind, choices=choices, checks=checks)
            continue
        value = _check_type(value, default, key, path, kind)
        allowed = choices.get((section, name))
        if allowed and value not in allowed:
            raise UsageError(f"{kind} {path}: '{key}' = {value!r} is not one of {', '.join(map(str, allowed))}")
        if key in checks:
            checks[key](value, key, path, kind)
        kwargs[name] = value
    return cls(**kwargs)


def _check_type(value, default, key: str, path: Path, kind: str):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise UsageError(f"{kind} {path}: '{key}' must be {type(default).__name__}, got {value!r}")
    return value
