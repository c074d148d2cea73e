"""Recipes: YAML files that set fields of ``GEMTrainingConfig``, validated key by key.

A recipe may set any GEM field or any field of TRL's ``SFTConfig`` / transformers'
``TrainingArguments``. Unknown keys are refused with the nearest valid names; values are
checked against the field types before the config is built. ``--set key=value`` overrides
are parsed as YAML scalars (``--set learning_rate=1e-4``, ``--set load_in_4bit=true``).
A relative ``data``, ``pairs_data`` or ``validation_data`` path in a recipe is taken relative to the recipe file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import GEMConfigError

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes"


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read ``eval_strategy: no`` as False."""


_RecipeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
RESOLVED_NAME = "training_config.json"


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of one in the project's ``recipes/`` folder."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (RECIPE_DIR / f"{name_or_path}", RECIPE_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml")) if RECIPE_DIR.is_dir() else []
    raise GEMConfigError(f"recipe {name_or_path} not found; give a YAML path or one of {available}")


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML)."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise GEMConfigError(f"override {pair!r} is not key=value")
        try:
            parsed = _parse_yaml(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value  # e.g. a template with quotes and colons: take it verbatim
        result[key.strip()] = value if isinstance(parsed, (dict, list)) and not value.lstrip().startswith(("[", "{")) else parsed
    return result


def load_recipe(name_or_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Build a validated ``GEMTrainingConfig`` from a recipe file and overrides."""
    from .trainer import GEMTrainingConfig

    values: dict[str, Any] = {}
    if name_or_path is not None:
        path = recipe_path(name_or_path)
        try:
            loaded = _parse_yaml(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GEMConfigError(f"recipe {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise GEMConfigError(f"recipe {path} must be a mapping of keys to values")
        for key in ("data", "pairs_data", "validation_data"):
            data = loaded.get(key)
            if isinstance(data, str) and not Path(data).is_absolute():
                loaded[key] = str((path.parent / data).resolve())
        values.update(loaded)
    values.update(overrides or {})
    values = _coerce_numbers(values)
    check_keys(values)
    try:
        return GEMTrainingConfig(**values)
    except GEMConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise GEMConfigError(f"invalid recipe value: {exc}") from None


def check_keys(values: dict[str, Any]) -> None:
    """Refuse unknown keys and values of the wrong type, naming the key."""
    from .trainer import GEMTrainingConfig

    fields = {f.name: f for f in dataclasses.fields(GEMTrainingConfig) if f.init}
    hints = typing.get_type_hints(GEMTrainingConfig)
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=3)
            gem_keys = sorted(gem_field_names())
            raise GEMConfigError(
                f"unknown recipe key {key!r}"
                + (f"; did you mean {close}?" if close else "")
                + f" GEM keys: {gem_keys}; every SFTConfig/TrainingArguments field is accepted too"
            )
        if not _matches(value, hints.get(key, Any)):
            raise GEMConfigError(f"recipe key {key!r} expects {_type_name(hints.get(key))}, got {value!r}")


def _coerce_numbers(values: dict[str, Any]) -> dict[str, Any]:
    """PyYAML reads ``1e-4`` (no dot) as a string; fields typed float take it as a number."""
    from .trainer import GEMTrainingConfig

    hints = typing.get_type_hints(GEMTrainingConfig)
    result = dict(values)
    for key, value in values.items():
        hint = hints.get(key)
        allowed = set(typing.get_args(hint)) | {hint}
        if isinstance(value, str) and float in allowed and str not in allowed:
            try:
                result[key] = float(value)
            except ValueError:
                pass
    return result


def gem_field_names() -> set[str]:
    from trl import SFTConfig

    from .trainer import GEMTrainingConfig

    return {f.name for f in dataclasses.fields(GEMTrainingConfig)} - {f.name for f in dataclasses.fields(SFTConfig)}


def save_resolved(config, path: Path) -> None:
    """The full resolved config as JSON (what a run really used)."""
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or value is None and _allows_none(hint):
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        if hint is str or not issubclass(hint, (int, float, bool, str)):
            # enums and other classes are built from strings by TrainingArguments itself
            return isinstance(value, (str, hint)) or not issubclass(hint, (int, float, bool))
        return isinstance(value, hint)
    return True


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or type(None) in typing.get_args(hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
