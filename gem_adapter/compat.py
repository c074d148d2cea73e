"""Does an adapter fit a base? Checked from configs, tensor shapes and tokenizers only.

``check_compatibility`` runs before any weight is loaded and raises ``IncompatibleError``
naming the first mismatch, in this order: architecture fields (model_type, hidden size,
layer count, attention heads, key/value heads, head dim, intermediate size), the LoRA
target modules (present in the base, with the same shapes), then the vocabulary (the base's
tokens identical to the adapter tokenizer's non-GEM tokens; GEM tokens new to the base).

The adapter's own architecture comes from the config of the base it was trained on when
that is still readable offline and matches the fingerprint in ``gem_config.json``;
otherwise it is inferred from the tensor shapes (hidden size, layer count, projection
widths), and the fingerprint catches the rest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import base_fingerprint
from .errors import IncompatibleError
from .files import ADAPTER_CONFIG, AdapterFolder, module_label, targets_module, targets_text
from .hub import resolve_base

# (config attribute, words used in messages)
ARCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("model_type", "architecture (model_type)"),
    ("hidden_size", "hidden size"),
    ("num_hidden_layers", "layer count"),
    ("num_attention_heads", "attention heads"),
    ("num_key_value_heads", "key/value heads"),
    ("head_dim", "head dim"),
    ("intermediate_size", "intermediate size"),
)
_PEFT_PARTS = {"lora_A", "lora_B", "lora_dropout", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
               "base_layer", "token_adapter", "original_module", "modules_to_save"}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class BaseSpec:
    """What the checks need to know about a base: config, module shapes, vocabulary."""

    name: str
    config: Any
    modules: dict[str, tuple[int, int]]  # module path -> (in, out); embeddings: (rows, dim)
    vocab: dict[str, int]  # tokenizer vocabulary without GEM tokens already in a loaded GEMModel
    input_embedding: str
    output_embedding: str | None
    gem_tokens: dict[str, int] = field(default_factory=dict)  # GEM tokens a loaded GEMModel already has

    @property
    def tied(self) -> bool:
        return bool(getattr(self.config, "tie_word_embeddings", False))

    def fingerprint(self) -> str:
        return base_fingerprint(self.config)


def architecture(config) -> dict[str, Any]:
    """The architecture fields of a transformers config (head_dim filled in when implicit)."""
    config = text_config(config)
    fields = {name: getattr(config, name, None) for name, _ in ARCH_FIELDS}
    if fields["head_dim"] is None and fields["hidden_size"] and fields["num_attention_heads"]:
        fields["head_dim"] = fields["hidden_size"] // fields["num_attention_heads"]
    if fields["num_key_value_heads"] is None:
        fields["num_key_value_heads"] = fields["num_attention_heads"]
    return fields


def text_config(config):
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def spec_from_folder(base: str | os.PathLike) -> tuple[str, BaseSpec]:
    """Resolve ``base`` and read its config and tokenizer; the weights are not loaded.

    Module shapes come from the architecture built on the meta device.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_base(base)
    config = AutoConfig.from_pretrained(base_path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    return base_path, _spec(str(base), skeleton, tokenizer.get_vocab(), {})


def spec_from_model(gem) -> BaseSpec:
    """The spec of a loaded ``GEMModel`` (its GEM tokens are known and set apart)."""
    vocab = gem.tokenizer.get_vocab()
    gem_tokens = {token: vocab.pop(token) for token in gem.config.gem_tokens if token in vocab}
    return _spec(str(gem.config.base_model or "the loaded model"), gem._causal_lm, vocab, gem_tokens)


def _spec(name: str, model, vocab: dict[str, int], gem_tokens: dict[str, int]) -> BaseSpec:
    import torch

    modules: dict[str, tuple[int, int]] = {}
    ids = {}
    for path, module in model.named_modules():
        if not path or _PEFT_PARTS & set(path.split(".")):
            continue
        ids[id(module)] = path
        base = _unwrapped(module)
        if isinstance(base, torch.nn.Embedding):
            modules[path] = (int(base.num_embeddings), int(base.embedding_dim))
        elif hasattr(module, "in_features") and hasattr(module, "out_features"):
            modules[path] = (int(module.in_features), int(module.out_features))
    input_embedding = ids.get(id(model.get_input_embeddings()), "model.embed_tokens")
    output = model.get_output_embeddings()
    output_embedding = ids.get(id(output)) if output is not None else None
    if output_embedding is None and output is not None:
        output_embedding = "lm_head"
    return BaseSpec(name, text_config(model.config), modules, vocab, input_embedding, output_embedding, gem_tokens)


def _unwrapped(module):
    """The plain layer inside PEFT wrappers (LoRA layers, trainable-token wrappers)."""
    for _ in range(8):
        if hasattr(module, "get_base_layer") and module.get_base_layer() is not module:
            module = module.get_base_layer()
        elif getattr(module, "original_module", None) is not None and module.original_module is not module:
            module = module.original_module
        else:
            break
    return module


def source_config(adapter: AdapterFolder):
    """The config of the base the adapter was trained on, if readable offline and unchanged."""
    from transformers import AutoConfig

    candidates = []
    if adapter.gem_config is not None and adapter.gem_config.base_model:
        candidates.append(adapter.gem_config.base_model)
    if adapter.config.get("base_model_name_or_path"):
        candidates.append(adapter.config["base_model_name_or_path"])
    recorded = adapter.gem_config.base_fingerprint if adapter.gem_config is not None else None
    for name in candidates:
        if str(name).endswith(".gguf"):
            continue  # converting a GGUF file is not a cheap look-up
        try:
            path = resolve_base(name, download=False)
            config = AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception:  # gone, renamed, offline: fall back to the tensor shapes
            continue
        if recorded is not None and base_fingerprint(text_config(config)) != recorded:
            continue
        return text_config(config)
    return None


def inferred_architecture(adapter: AdapterFolder) -> dict[str, Any]:
    """What the tensor shapes say: hidden size, layer count, q/k projection widths."""
    modules = adapter.lora_modules
    found: dict[str, Any] = {}
    rows_key = adapter.gem_rows_key
    if rows_key is not None:
        found["hidden_size"] = adapter.shapes[rows_key][-1]
    for name, module in modules.items():
        leaf = name.rsplit(".", 1)[-1]
        if "hidden_size" not in found and leaf in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") and module.in_features:
            found["hidden_size"] = module.in_features
        if leaf == "q_proj" and module.out_features:
            found.setdefault("q_proj_out", module.out_features)
        if leaf == "k_proj" and module.out_features:
            found.setdefault("k_proj_out", module.out_features)
        if leaf in ("gate_proj", "up_proj") and module.out_features:
            found.setdefault("intermediate_size", module.out_features)
    layers = [int(m.group(1)) for m in (_LAYER.search(name) for name in modules) if m]
    if layers and not adapter.config.get("layers_to_transform"):
        found["num_hidden_layers"] = max(layers) + 1
    return found


def adapter_architecture(adapter: AdapterFolder) -> tuple[dict[str, Any], str]:
    """The adapter's architecture and where it came from (``source config`` or ``tensor shapes``)."""
    config = source_config(adapter)
    if config is not None:
        return architecture(config), "source config"
    return inferred_architecture(adapter), "tensor shapes"


def check_compatibility(adapter: AdapterFolder, base: BaseSpec) -> None:
    """Raise ``IncompatibleError`` naming the first way ``adapter`` does not fit ``base``."""
    trained_on = (adapter.gem_config.base_model if adapter.gem_config else None) or adapter.config.get(
        "base_model_name_or_path") or "another model"
    fix = f"(adapter {adapter.path} was trained on {trained_on}); use that base or one with the same architecture"
    _check_architecture(adapter, base, fix)
    _check_modules(adapter, base, fix)
    _check_vocabulary(adapter, base)


def _check_architecture(adapter: AdapterFolder, base: BaseSpec, fix: str) -> None:
    ours = architecture(base.config)
    theirs, origin = adapter_architecture(adapter)
    for name, words in ARCH_FIELDS:
        if theirs.get(name) is not None and ours.get(name) is not None and theirs[name] != ours[name]:
            raise IncompatibleError(f"adapter {words} {theirs[name]} != base {ours[name]} {fix}")
    if origin == "tensor shapes":
        q_width = (ours["num_attention_heads"] or 0) * (ours["head_dim"] or 0)
        kv_width = (ours["num_key_value_heads"] or 0) * (ours["head_dim"] or 0)
        if theirs.get("q_proj_out") not in (None, q_width) or theirs.get("k_proj_out") not in (None, kv_width):
            raise IncompatibleError(
                f"adapter head layout (q_proj width {theirs.get('q_proj_out')}, k_proj width {theirs.get('k_proj_out')}) "
                f"!= base {ours['num_attention_heads']} heads x {ours['head_dim']} = {q_width}, "
                f"{ours['num_key_value_heads']} key/value heads x {ours['head_dim']} = {kv_width} {fix}"
            )
    recorded = adapter.gem_config.base_fingerprint if adapter.gem_config is not None else None
    if recorded and recorded != base.fingerprint():
        described = ", ".join(f"{k}={v}" for k, v in ours.items())
        raise IncompatibleError(
            f"adapter architecture fingerprint {recorded} != base {base.fingerprint()} (base: {described}) {fix}"
        )


def _check_modules(adapter: AdapterFolder, base: BaseSpec, fix: str) -> None:
    vocab_rows = _vocab_rows(adapter, base)
    for name, module in sorted(adapter.lora_modules.items()):
        if name not in base.modules:
            model_type = getattr(base.config, "model_type", "?")
            raise IncompatibleError(
                f"LoRA target module {name!r} is not in the base ({model_type}, {base.name}) {fix}"
            )
        expected_in, expected_out = base.modules[name]
        if module.embedding or name in (base.input_embedding, base.output_embedding):
            # Embedding-sized dimensions grow by the GEM rows.
            if name == base.input_embedding or module.embedding:
                expected_in = max(expected_in, vocab_rows)
            else:
                expected_out = max(expected_out, vocab_rows)
        found = (module.in_features, module.out_features)
        if None in found or found != (expected_in, expected_out):
            raise IncompatibleError(
                f"LoRA module {name!r} has (in, out) = {found} but the base's is {(expected_in, expected_out)} {fix}"
            )
    _check_targets_present(adapter, base)


def _check_targets_present(adapter: AdapterFolder, base: BaseSpec) -> None:
    """Every base module the config targets must have its LoRA in the file (PEFT would make one up)."""
    if not adapter.opened or not adapter.lora_modules:
        return
    absent = [
        name for name in sorted(base.modules)
        if name not in adapter.lora_modules and targets_module(
            adapter.config, name, embedding=name == base.input_embedding, output_layer=name == base.output_embedding)
    ]
    if absent:
        leaves = sorted({name.rsplit(".", 1)[-1] for name in absent})
        raise IncompatibleError(
            f"adapter {adapter.path}: {ADAPTER_CONFIG} says target_modules={targets_text(adapter.config.get('target_modules'))}, "
            f"which in this base also covers {', '.join(leaves)} ({len(absent)} modules, e.g. {module_label(absent[0])}), "
            f"but {adapter.weights.name} holds no LoRA weights for them; the config was edited or belongs to other "
            "weights - restore it"
        )


def _vocab_rows(adapter: AdapterFolder, base: BaseSpec) -> int:
    rows = base.modules.get(base.input_embedding, (0, 0))[0]
    indices = adapter.token_indices
    return max(rows, max(indices) + 1) if indices else rows


def _check_rows_without_tokenizer(adapter: AdapterFolder, base: BaseSpec) -> None:
    """A GEM adapter saved without its tokenizer (the shipped one) takes the base's, with the GEM
    tokens appended as ``GEMModel`` appends them: its trained rows must be where those land."""
    gem_tokens = adapter.gem_config.gem_tokens if adapter.gem_config is not None else []
    if base.gem_tokens:
        expected = [base.gem_tokens[t] for t in gem_tokens if t in base.gem_tokens]
    elif base.vocab:
        expected = list(range(len(base.vocab), len(base.vocab) + len(gem_tokens)))
    else:
        return
    if adapter.token_indices and adapter.token_indices != expected:
        raise IncompatibleError(
            f"adapter {adapter.path} has no tokenizer files and trains token rows {adapter.token_indices}, but the "
            f"base's tokenizer with the GEM tokens added puts them at {expected}; save the adapter with its tokenizer"
        )


def _check_vocabulary(adapter: AdapterFolder, base: BaseSpec) -> None:
    if not has_tokenizer(adapter.path):
        if adapter.is_gem:
            _check_rows_without_tokenizer(adapter, base)
        return  # a plain LoRA without tokenizer: nothing to compare
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(adapter.path)).get_vocab()
    gem_tokens = adapter.gem_config.gem_tokens if adapter.gem_config is not None else []
    missing = [t for t in gem_tokens if t not in theirs]
    if missing:
        raise IncompatibleError(f"adapter tokenizer lacks GEM tokens {missing}; re-save the adapter with its tokenizer")
    gem_ids = [theirs[t] for t in gem_tokens]
    if adapter.token_indices and adapter.token_indices != gem_ids:
        raise IncompatibleError(
            f"adapter trains token rows {adapter.token_indices} but its tokenizer puts the GEM tokens at {gem_ids}; "
            "the tokenizer belongs to another adapter - re-save it"
        )
    if base.gem_tokens:
        # A loaded GEMModel: its GEM tokens must be exactly the adapter's.
        if gem_tokens and dict(zip(gem_tokens, gem_ids)) != base.gem_tokens:
            raise IncompatibleError(
                f"adapter GEM tokens {dict(zip(gem_tokens, gem_ids))} != loaded model's {base.gem_tokens}; "
                "load the model with this adapter's gem_config (same k and token template)"
            )
        gem_tokens = list(base.gem_tokens)
    else:
        collisions = {t: base.vocab[t] for t in gem_tokens if t in base.vocab}
        if collisions:
            raise IncompatibleError(
                f"GEM token(s) {collisions} already exist in the base tokenizer ({base.name}); the base is probably a "
                "merged GEM checkpoint - use the original base model"
            )
    plain = {t: i for t, i in theirs.items() if t not in gem_tokens}
    if plain != base.vocab:
        only_adapter = sorted(set(plain) - set(base.vocab))
        only_base = sorted(set(base.vocab) - set(plain))
        moved = sorted(t for t in set(plain) & set(base.vocab) if plain[t] != base.vocab[t])
        example = (f"{only_adapter[0]!r} only in the adapter" if only_adapter else
                   f"{only_base[0]!r} only in the base" if only_base else
                   f"{moved[0]!r} has id {plain[moved[0]]} in the adapter and {base.vocab[moved[0]]} in the base")
        raise IncompatibleError(
            f"adapter vocabulary ({len(plain)} tokens besides GEM) != base vocabulary ({len(base.vocab)} tokens): "
            f"{len(only_adapter)} only in the adapter, {len(only_base)} only in the base, {len(moved)} with other ids "
            f"(e.g. {example}); the adapter was trained with another tokenizer"
        )


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds tokenizer files (else an adapter takes its base's tokenizer)."""
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))


def tokenizer_source(adapter: Path, base_path: str | Path) -> str:
    """Where an adapter's tokenizer loads from: its own files, else its base's.

    The shipped adapter carries no tokenizer (3.5 MB saved); ``GEMModel`` adds the GEM tokens to the
    base's, which gives them the ids the adapter was trained with.
    """
    return str(adapter) if has_tokenizer(Path(adapter)) else str(base_path)


def embedding_targets(adapter: AdapterFolder, base: BaseSpec) -> list[str]:
    """LoRA modules of ``adapter`` that are the base's input or output embedding."""
    names = {base.input_embedding, base.output_embedding} - {None}
    return sorted(name for name, module in adapter.lora_modules.items() if name in names or module.embedding)


__all__ = [
    "ARCH_FIELDS",
    "BaseSpec",
    "adapter_architecture",
    "architecture",
    "check_compatibility",
    "embedding_targets",
    "inferred_architecture",
    "source_config",
    "spec_from_folder",
    "spec_from_model",
]
