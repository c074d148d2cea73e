"""``swap``: re-target an adapter to another checkpoint of the same architecture.

A LoRA trained on one checkpoint (say a base model) applies unchanged to a sibling with
the same architecture and vocabulary (its instruct version): the deltas and the GEM rows
are values of the same shapes. ``swap`` checks that the new base fits, then writes a ready
adapter folder whose ``adapter_config.json`` and ``gem_config.json`` name the new base and
its fingerprint, with the new base's tokenizer (plus GEM tokens); ``merge=True`` also folds
it into a merged checkpoint. ``load_adapters`` is the runtime side: one base loaded once
with several adapters on it, switched with ``GEMModel.use_adapter``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..compat import check_compatibility, spec_from_folder
from ..errors import GEMError, IncompatibleError
from ..files import (
    ADAPTER_CONFIG,
    SAFE_WEIGHTS,
    atomic_output,
    check_output,
    parse_dtype,
    read_adapter,
)
from ..model import GEMModel
from ..runtime import load_adapter, use_adapter
from .merge import MergeReport, merge, require_gem

SWAP_REPORT = "swap_report.json"


@dataclass
class SwapReport:
    """Where the re-targeted adapter (and merged model) went."""

    out: str
    base: str
    adapter: str
    source_base: str | None
    base_fingerprint: str
    merged: MergeReport | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        lines = [f"re-targeted {self.adapter} (trained on {self.source_base}) to {self.base} -> {self.out}",
                 f"base fingerprint {self.base_fingerprint}"]
        if self.merged is not None:
            lines += self.merged.lines()
        return lines


def swap(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    merge_model: bool = False,
    merged_out: str | os.PathLike | None = None,
    dtype: str = "float32",
    force: bool = False,
    allow_pickle: bool = False,
) -> SwapReport:
    """Write ``adapter`` re-targeted to ``base`` into ``out`` (and merged, if asked).

    ``merged_out`` defaults to ``<out>-merged`` when ``merge_model`` is set. All checks run
    before anything is written.
    """
    parse_dtype(dtype)
    out = check_output(out, force, (adapter,))
    if merge_model and merged_out is None:
        merged_out = Path(f"{out}-merged")
    if merged_out is not None:
        check_output(merged_out, force, (adapter, out))
    folder = read_adapter(adapter, allow_pickle=allow_pickle)
    require_gem(folder, "swap")
    base_path, spec = spec_from_folder(base)
    check_output(out, force, (adapter, base_path))
    check_compatibility(folder, spec)
    tokenizer = _tokenizer_with_gem_tokens(base_path, folder)

    from safetensors.torch import save_file

    from ..version import __version__

    with atomic_output(out, force) as staging:
        if folder.pickled:  # re-targeting is a chance to drop the pickle
            save_file(folder.tensors(), str(staging / SAFE_WEIGHTS), metadata={"format": "pt"})
        else:
            shutil.copy2(folder.weights, staging / SAFE_WEIGHTS)
        adapter_config = {**folder.config, "base_model_name_or_path": str(base)}
        (staging / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(staging)
        gem_config = dataclasses.replace(
            folder.gem_config, base_model=str(base), base_fingerprint=spec.fingerprint(), library_version=__version__
        )
        gem_config.save(staging)
        report = SwapReport(str(out), str(base), str(adapter), folder.gem_config.base_model, spec.fingerprint())
        (staging / SWAP_REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if merged_out is not None:
        report.merged = merge(base, out, merged_out, dtype=dtype, force=force)
    return report


def _tokenizer_with_gem_tokens(base_path: str, folder):
    """The new base's tokenizer with the GEM tokens, which must land on the adapter's rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    tokens = folder.gem_config.gem_tokens
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != folder.token_indices:
        raise IncompatibleError(
            f"in the base {base_path} the GEM tokens get ids {ids}, the adapter's rows are {folder.token_indices}; "
            "the vocabularies differ - use a base with the adapter's tokenizer"
        )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # as GEMModel does
    return tokenizer


def load_adapters(base: str | os.PathLike, adapters: Mapping[str, str | os.PathLike],
                  active: Sequence[str] | None = None, *, allow_pickle: bool = False, **kwargs):
    """A ``GEMModel`` of ``base`` with every adapter loaded and ``active`` (default: all) in use.

    The GEM tokens come from the (first) GEM adapter among ``adapters``; ``kwargs`` go to
    ``GEMModel.from_pretrained`` (``load_in_4bit``, ``dtype``, ``device``...).
    """
    if not adapters:
        raise GEMError("load_adapters needs at least one adapter (name -> folder)")
    folders = {name: read_adapter(path, allow_pickle=allow_pickle) for name, path in adapters.items()}
    gem_folder = next((f for f in folders.values() if f.is_gem), None)
    config = dataclasses.replace(gem_folder.gem_config, template=None) if gem_folder is not None else None
    gem = GEMModel.from_pretrained(base, config=config, **kwargs)
    for name, folder in folders.items():
        load_adapter(gem, folder.path, name, allow_pickle=allow_pickle)
    use_adapter(gem, list(active) if active is not None else list(adapters))
    return gem


__all__ = ["SWAP_REPORT", "SwapReport", "load_adapters", "swap"]
