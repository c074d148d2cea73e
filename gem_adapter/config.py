"""GEMConfig: how many GEM tokens, how they are inserted, and how a text is pooled.

The config travels with every adapter and merged checkpoint as ``gem_config.json`` so a
folder alone says how to embed with it. Validation happens in ``__post_init__`` so a bad
value fails where it is written, not deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GEMConfigError
from .pooling import POOLING_MODES
from .scope import ADAPTER_SCOPES

GEM_CONFIG_NAME = "gem_config.json"


@dataclass
class GEMConfig:
    """Settings of the GEM method that must match between training and embedding."""

    num_gem_tokens: int = field(
        default=1,
        metadata={"help": "k, the number of special tokens that summarise the prefix."},
    )
    token_template: str = field(
        default="<|gem_{i}|>",
        metadata={"help": "Format string of the special tokens; {i} runs from 0 to k-1."},
    )
    pooling: str = field(
        default="gem",
        metadata={"help": f"Default pooling of encode(): one of {POOLING_MODES}."},
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Default text template for encode(), with a {text} placeholder (None: the bare text)."},
    )
    max_length: int = field(
        default=512,
        metadata={"help": "Tokens per text when embedding, GEM tokens included."},
    )
    min_prefix_tokens: int = field(
        default=4,
        metadata={"help": "Training: fewest text tokens before the GEM tokens."},
    )
    min_suffix_tokens: int = field(
        default=4,
        metadata={"help": "Training: fewest text tokens after the GEM tokens."},
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "Name or path of the base model the tokens were added to."},
    )
    base_fingerprint: str | None = field(
        default=None,
        metadata={"help": "Hash of the base config's architecture fields (see tokens.fingerprint)."},
    )
    library_version: str | None = field(
        default=None, metadata={"help": "gem-adapter version that wrote this config."}
    )
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={"help": "Prefix sizes the embedding was trained to be cut to (encode(dimensions=d)); None: full size only."},
    )
    adapter_scope: str = field(
        default="all",
        metadata={"help": "Where the adapter's LoRA applies: 'all' tokens, or 'gem': the GEM tokens and after only, "
                          "so text without GEM tokens (generation) gets the base model's exact logits (see scope.py)."},
    )
    distilled_from: str | None = field(
        default=None,
        metadata={"help": "Training record: the teacher embedder whose similarities the adapter was also trained to match "
                          "(distill_teacher); None: no distillation. Informational: embedding never reads it."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.num_gem_tokens, int) or self.num_gem_tokens < 1:
            raise GEMConfigError(
                f"num_gem_tokens must be an integer >= 1, got {self.num_gem_tokens!r}"
            )
        if "{i}" not in self.token_template:
            raise GEMConfigError(
                f"token_template must contain '{{i}}' so the k tokens differ, got {self.token_template!r}"
            )
        if self.pooling not in POOLING_MODES:
            raise GEMConfigError(
                f"pooling {self.pooling!r} is not one of {POOLING_MODES}"
            )
        if self.template is not None and "{text}" not in self.template:
            raise GEMConfigError(f"template must contain '{{text}}', got {self.template!r}")
        if not isinstance(self.max_length, int) or self.max_length <= self.num_gem_tokens:
            raise GEMConfigError(
                f"max_length must exceed num_gem_tokens ({self.num_gem_tokens}), got {self.max_length!r}"
            )
        for name in ("min_prefix_tokens", "min_suffix_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise GEMConfigError(f"{name} must be an integer >= 1, got {value!r}")
        try:
            self.matryoshka_dims = check_matryoshka_dims(self.matryoshka_dims)
        except (TypeError, ValueError) as exc:
            raise GEMConfigError(str(exc)) from None
        if self.adapter_scope not in ADAPTER_SCOPES:
            raise GEMConfigError(f"adapter_scope must be one of {ADAPTER_SCOPES}, got {self.adapter_scope!r}")

    @property
    def gem_tokens(self) -> list[str]:
        """The special token strings, in order."""
        return [self.token_template.format(i=i) for i in range(self.num_gem_tokens)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GEMConfig":
        """Build a config, refusing unknown keys so a typo never passes silently."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise GEMConfigError(
                f"unknown GEM config key(s) {unknown}; valid keys: {sorted(valid)}"
            )
        return cls(**data)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``gem_config.json`` (indented, sorted keys) into ``folder``."""
        path = Path(folder) / GEM_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "GEMConfig":
        path = Path(folder) / GEM_CONFIG_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise GEMConfigError(f"{path} not found: is this a GEM adapter or merged checkpoint?") from None
        except json.JSONDecodeError as exc:
            raise GEMConfigError(f"{path} is not valid JSON ({exc}); re-create it or re-save the adapter") from None
        return cls.from_dict(data)

    @staticmethod
    def exists(folder: str | os.PathLike) -> bool:
        return (Path(folder) / GEM_CONFIG_NAME).is_file()


def check_matryoshka_dims(dims, hidden_size: int | None = None) -> list[int] | None:
    """``dims`` as a list once checked: positive, strictly increasing, below ``hidden_size``.

    Raises ``TypeError`` / ``ValueError`` with one line naming the bad value (and the hidden size).
    """
    if dims is None:
        return None
    if isinstance(dims, (str, bytes)) or not isinstance(dims, (list, tuple)):
        raise TypeError(f"matryoshka_dims must be a list of integers, got {dims!r}")
    values = list(dims)
    if not values or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in values):
        raise ValueError(f"matryoshka_dims must be a non-empty list of positive integers, got {values!r}")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"matryoshka_dims must be strictly increasing, got {values!r}")
    if hidden_size is not None and values[-1] >= hidden_size:
        raise ValueError(
            f"matryoshka_dims must lie below the model's hidden size {hidden_size} (the full size is always trained), "
            f"got {values[-1]}"
        )
    return values


def base_fingerprint(model_config) -> str:
    """A short hash of the architecture fields an adapter depends on."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "head_dim")
    fields = {key: getattr(model_config, key, None) for key in keys}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
