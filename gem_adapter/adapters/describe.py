"""``inspect``: what an adapter or merged GEM folder is, read from its files (no model load).

A broken adapter is still described: what ``read_adapter`` would refuse (a config that does
not match its tensors, a corrupt weights file, missing GEM rows) becomes a ``warnings``
entry, one line each. A pickled ``adapter_model.bin`` is opened only with ``allow_pickle``
(unpickling can run code); otherwise it is reported as a pickle that was not opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import GEMConfig
from ..errors import GEMError, ModelResolutionError
from ..files import ADAPTER_CONFIG, folder_files, read_adapter, read_json

KIND_ADAPTER = "GEM adapter"
KIND_LORA = "plain LoRA adapter"
KIND_MERGED = "merged GEM checkpoint"
_REPORTS = ("merge_report.json", "stack_report.json", "swap_report.json")


def inspect(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Describe an adapter folder (GEM or plain LoRA) or a merged GEM checkpoint.

    Problems with an adapter's files are listed under ``warnings`` rather than raised.
    ``allow_pickle`` lets a pickled ``adapter_model.bin`` be opened to read its shapes.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelResolutionError(f"{folder} does not exist or is not a folder; check the path")
    if (folder / ADAPTER_CONFIG).is_file():
        info = _adapter_info(folder, allow_pickle)
    elif (folder / "config.json").is_file() and GEMConfig.exists(folder):
        info = _merged_info(folder)
    else:
        raise GEMError(
            f"{folder} is neither an adapter (no {ADAPTER_CONFIG}) nor a merged GEM checkpoint "
            "(config.json + gem_config.json); point at a folder written by gem train / merge / stack / swap"
        )
    files = folder_files(folder)
    info["files"] = files
    info["total_bytes"] = sum(files.values())
    for name in _REPORTS:
        if (folder / name).is_file():
            info[name.removesuffix(".json")] = json.loads((folder / name).read_text())
    warnings = info.pop("warnings", [])
    if warnings:
        info["warnings"] = warnings  # last, where a reader's eye ends
    return info


def _gem_part(folder: Path, config: GEMConfig | None) -> dict[str, Any]:
    if config is None:
        return {}
    info = {
        "base_model": config.base_model,
        "base_fingerprint": config.base_fingerprint,
        "k": config.num_gem_tokens,
        "gem_tokens": config.gem_tokens,
        "pooling": config.pooling,
        "template": config.template,
        "max_length": config.max_length,
        "adapter_scope": config.adapter_scope,
        "library_version": config.library_version,
    }
    vocab = _vocab(folder)
    if vocab is not None:
        info["gem_token_ids"] = [vocab.get(token) for token in config.gem_tokens]
        info["vocab_size"] = len(vocab)
    return info


def _vocab(folder: Path) -> dict[str, int] | None:
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    except Exception:  # a broken tokenizer is reported as missing, not fatal to inspect
        return None


def _adapter_info(folder: Path, allow_pickle: bool = False) -> dict[str, Any]:
    adapter = read_adapter(folder, allow_pickle=allow_pickle, strict=False)  # safetensors: headers only
    config = adapter.config
    warnings = [str(problem) for problem in adapter.problems]
    try:
        token_indices = adapter.token_indices
    except GEMError as exc:
        token_indices = config.get("trainable_token_indices")
        if str(exc) not in warnings:
            warnings.append(str(exc))
    modules = adapter.lora_modules
    ranks = sorted({m.rank for m in modules.values() if m.rank is not None})
    info: dict[str, Any] = {"kind": KIND_ADAPTER if adapter.is_gem else KIND_LORA, "path": str(folder)}
    info.update(_gem_part(folder, adapter.gem_config))
    if not adapter.is_gem:
        info["base_model"] = config.get("base_model_name_or_path")
    targets = config.get("target_modules")
    info["lora"] = {
        "r": config.get("r"),
        "ranks_in_file": ranks,
        "alpha": config.get("lora_alpha"),
        "scaling": (config.get("lora_alpha") or 0) / (config.get("r") or 1),
        "dropout": config.get("lora_dropout"),
        "use_dora": bool(config.get("use_dora")),
        "use_rslora": bool(config.get("use_rslora")),
        "target_module_names": sorted({name.rsplit(".", 1)[-1] for name in modules}),
        "targets": targets if isinstance(targets, str) else sorted(targets or []),
        "modules": len(modules),
        "parameters": sum(_numel(shape) for key, shape in adapter.shapes.items() if "lora_" in key),
    }
    info["trainable_token_indices"] = token_indices
    if not adapter.opened:
        info["weights_file"] = f"{adapter.weights.name} (pickle, not opened: pass allow_pickle / --allow-pickle to read it)"
    else:
        info["weights_file"] = adapter.weights.name + (" (pickle)" if adapter.pickled else "")
    info["peft_version"] = config.get("peft_version")
    info["trained_in_4bit"] = adapter.trained_in_4bit
    info["warnings"] = warnings
    return info


def _merged_info(folder: Path) -> dict[str, Any]:
    from ..compat import architecture

    config = read_json(folder / "config.json")
    gem_config = GEMConfig.load(folder)
    info: dict[str, Any] = {"kind": KIND_MERGED, "path": str(folder)}
    info.update(_gem_part(folder, gem_config))
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(str(folder))
    info["architecture"] = architecture(hf_config)
    from ..config import base_fingerprint

    info["fingerprint_matches"] = base_fingerprint(hf_config) == gem_config.base_fingerprint
    info["embedding_rows"] = config.get("vocab_size") or getattr(hf_config.get_text_config(), "vocab_size", None)
    info["tied_embeddings"] = bool(getattr(hf_config.get_text_config(), "tie_word_embeddings", False))
    info["dtype"] = str(config.get("dtype") or config.get("torch_dtype"))
    return info


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total


def format_inspection(info: dict[str, Any]) -> str:
    """``inspect``'s dict as aligned ``key: value`` lines (nested dicts indented)."""
    lines: list[str] = []

    def emit(mapping: dict[str, Any], indent: str, sizes: bool) -> None:
        for key, value in mapping.items():
            if key == "warnings" and isinstance(value, list):
                lines.extend(f"{indent}warning: {line}" for line in value)
            elif isinstance(value, dict) and value:
                lines.append(f"{indent}{key}:")
                emit(value, indent + "  ", key == "files")
            elif sizes or key == "total_bytes":
                lines.append(f"{indent}{key}: {_size(int(value))}")
            else:
                lines.append(f"{indent}{key}: {value}")

    emit(info, "", False)
    return "\n".join(lines)


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


__all__ = ["KIND_ADAPTER", "KIND_LORA", "KIND_MERGED", "format_inspection", "inspect"]
