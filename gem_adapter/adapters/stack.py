"""``stack``: combine a GEM adapter with other LoRAs into one adapter folder.

The LoRA part is PEFT's ``add_weighted_adapter``. With weights w_i and LoRA scalings s_i:

* ``cat``: the ranks are concatenated; the delta is exactly sum_i w_i s_i B_i A_i;
* ``linear``: A = sum_i sign(w_i) sqrt(|w_i s_i|) A_i and B = sum_i sqrt(|w_i s_i|) B_i
  (equal ranks; cross terms included, PEFT's definition);
* ``svd``: the exact sum of deltas truncated to ``svd_rank`` by SVD;
* ``ties``, ``dare_ties``, ``dare_linear``: task-arithmetic variants with pruning at
  ``density`` (DARE draws at random: ``seed`` makes it repeatable).

PEFT's combination does not carry the trainable token rows, so the GEM rows of one GEM
adapter (the only one, or ``gem_rows_from``) are written into the result explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import quiet
from ..compat import check_compatibility, spec_from_folder, tokenizer_source
from ..errors import GEMError, IncompatibleError
from ..files import (
    ADAPTER_CONFIG,
    SAFE_WEIGHTS,
    AdapterFolder,
    atomic_output,
    check_output,
    load_tensors,
    read_adapter,
)
from .merge import require_unscoped

METHODS = ("linear", "cat", "svd", "ties", "dare_ties", "dare_linear")
EQUAL_RANK_METHODS = ("linear", "ties", "dare_ties", "dare_linear")
PRUNING_METHODS = ("ties", "dare_ties", "dare_linear")
STACK_REPORT = "stack_report.json"
_COMBINED = "gem_stacked"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass
class StackReport:
    """What ``stack`` combined, and how."""

    out: str
    base: str
    adapters: dict[str, str]
    weights: list[float]
    method: str
    rank: int
    density: float | None
    gem_rows_from: str
    lora_modules: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        parts = ", ".join(f"{name} x {w:g}" for name, w in zip(self.adapters, self.weights))
        density = f", density {self.density:g}" if self.density is not None else ""
        return [f"stacked {parts} with {self.method} (rank {self.rank}{density}) -> {self.out}",
                f"{self.lora_modules} LoRA modules; GEM rows from {self.gem_rows_from}"]


def parse_weights(text: str | None, count: int) -> list[float]:
    """``"1,0.5"`` -> [1.0, 0.5]; None -> all ones."""
    if text is None or text == "":
        return [1.0] * count
    try:
        weights = [float(part) for part in str(text).split(",")]
    except ValueError:
        raise GEMError(f"--weights {text!r} must be comma-separated numbers, e.g. 1,0.5") from None
    return weights


def stack(
    base: str | os.PathLike,
    adapters: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
    method: str = "linear",
    force: bool = False,
    allow_pickle: bool = False,
    density: float | None = None,
    svd_rank: int | None = None,
    gem_rows_from: str | None = None,
    seed: int = 0,
) -> StackReport:
    """Combine ``adapters`` (name -> folder) on ``base`` into one GEM adapter at ``out``."""
    import torch

    started = time.time()
    names = list(adapters)
    weights = [float(w) for w in (weights if weights is not None else [1.0] * len(names))]
    _check_arguments(names, weights, method, density, svd_rank)
    if method in PRUNING_METHODS and density is None:
        density = 0.5
    check_output(out, force, tuple(adapters.values()))
    folders = {name: read_adapter(path, allow_pickle=allow_pickle) for name, path in adapters.items()}
    for folder in folders.values():
        require_unscoped(folder, "stack")
    source = _rows_source(folders, gem_rows_from)
    _check_ranks(folders, method)
    base_path, spec = spec_from_folder(base)
    check_output(out, force, (*adapters.values(), base_path))
    for name, folder in folders.items():
        check_compatibility(folder, spec)
        if folder.token_indices and folder.token_indices != folders[source].token_indices:
            raise IncompatibleError(
                f"adapter {name!r} trains token rows {folder.token_indices}, {source!r} trains "
                f"{folders[source].token_indices}; GEM adapters with other GEM tokens cannot be stacked"
            )

    from ..version import __version__

    with atomic_output(out, force) as staging:
        peft_model = _load_all(base_path, folders, source)
        _same_target_type(peft_model, names)
        torch.manual_seed(seed)
        try:
            with quiet.peft_calls():
                peft_model.add_weighted_adapter(names, weights, _COMBINED, combination_type=method,
                                                density=density, svd_rank=svd_rank)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise GEMError(f"PEFT could not combine the adapters with {method!r}: {exc}") from None
        from ..runtime import tolerant_token_wrappers

        with tolerant_token_wrappers():
            peft_model.save_pretrained(str(staging / ".peft"), selected_adapters=[_COMBINED], save_embedding_layers=False)
        saved = staging / ".peft" / _COMBINED
        config = json.loads((saved / ADAPTER_CONFIG).read_text())
        tensors = {k: v for k, v in load_tensors(saved / SAFE_WEIGHTS).items() if "token_adapter" not in k}
        _carry_gem_rows(folders[source], config, tensors)
        config["base_model_name_or_path"] = str(base)
        from safetensors.torch import save_file

        save_file(tensors, str(staging / SAFE_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        _remove_tree(staging / ".peft")
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer_source(folders[source].path, base_path)).save_pretrained(staging)
        dataclasses.replace(folders[source].gem_config, base_model=str(base), base_fingerprint=spec.fingerprint(),
                            library_version=__version__).save(staging)
        report = StackReport(
            out=str(out), base=str(base), adapters={k: str(v) for k, v in adapters.items()}, weights=weights,
            method=method, rank=int(config["r"]), density=density, gem_rows_from=source,
            lora_modules=sum(1 for k in tensors if k.endswith("lora_A.weight") or k.endswith("lora_embedding_A")),
        )
        report.seconds = round(time.time() - started, 2)
        (staging / STACK_REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _check_arguments(names, weights, method, density, svd_rank) -> None:
    if method not in METHODS:
        raise GEMError(f"method {method!r} is not one of {METHODS}")
    if len(names) < 2:
        raise GEMError(f"stack needs at least two adapters (name=folder), got {len(names)}")
    bad = [n for n in names if not _NAME.match(n) or n == _COMBINED]
    if bad:
        raise GEMError(f"adapter names {bad} must be letters, digits, _ or - (and not {_COMBINED!r}), e.g. gem=./adapter")
    if len(weights) != len(names):
        raise GEMError(f"{len(weights)} weights for {len(names)} adapters; give one weight per adapter, e.g. --weights 1,1")
    if density is not None and not 0 < density <= 1:
        raise GEMError(f"density must be in (0, 1], got {density}")
    if svd_rank is not None and svd_rank < 1:
        raise GEMError(f"svd_rank must be >= 1, got {svd_rank}")


def _rows_source(folders: dict[str, AdapterFolder], wanted: str | None) -> str:
    gem = [name for name, folder in folders.items() if folder.is_gem]
    if wanted is not None:
        if wanted not in gem:
            raise GEMError(f"gem_rows_from {wanted!r} is not one of the GEM adapters {gem}")
        return wanted
    if not gem:
        raise GEMError("none of the adapters is a GEM adapter (with gem_config.json); stack combines a GEM adapter with other LoRAs")
    if len(gem) > 1:
        raise GEMError(f"several GEM adapters {gem}: say whose GEM rows to keep with gem_rows_from / --gem-rows-from")
    return gem[0]


def _check_ranks(folders: dict[str, AdapterFolder], method: str) -> None:
    if method not in EQUAL_RANK_METHODS:
        return
    ranks = {name: folder.rank for name, folder in folders.items()}
    patterned = [name for name, folder in folders.items() if folder.config.get("rank_pattern")]
    if len(set(ranks.values())) > 1 or patterned:
        raise GEMError(f"method {method!r} needs adapters of one rank, got {ranks}; use method 'cat' or 'svd'")


def _load_all(base_path: str, folders: dict[str, AdapterFolder], source: str):
    """The base (float32, GEM rows added) with every adapter loaded under its name."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..model import GEMModel

    lm = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    gem = GEMModel(lm, AutoTokenizer.from_pretrained(tokenizer_source(folders[source].path, base_path)),
                   folders[source].gem_config)
    names = list(folders)
    with quiet.peft_calls():
        model = PeftModel.from_pretrained(gem.model, str(folders[names[0]].path), adapter_name=names[0], is_trainable=False)
    from ..runtime import tolerant_token_wrappers

    with tolerant_token_wrappers(), quiet.peft_calls():
        for name in names[1:]:
            model.load_adapter(str(folders[name].path), adapter_name=name, is_trainable=False)
    return model


def _same_target_type(model, names: list[str]) -> None:
    """PEFT refuses to mix list and regex ``target_modules``: write lists as regexes then."""
    configs = [model.peft_config[name] for name in names]
    if len({isinstance(c.target_modules, str) for c in configs}) == 1:
        return
    for config in configs:
        if not isinstance(config.target_modules, str):
            alternatives = "|".join(re.escape(t) for t in sorted(config.target_modules))
            config.target_modules = rf"(.*\.)?({alternatives})"


def _carry_gem_rows(source: AdapterFolder, config: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Put the source adapter's trained GEM rows (and their indices) into the combined adapter."""
    rows = source.tensors()[source.gem_rows_key]
    tensors[source.gem_rows_key] = rows.clone()
    config["trainable_token_indices"] = source.config["trainable_token_indices"]


def _remove_tree(path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


__all__ = ["METHODS", "STACK_REPORT", "StackReport", "parse_weights", "stack"]
