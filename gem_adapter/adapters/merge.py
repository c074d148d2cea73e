"""``merge``: fold a GEM adapter (LoRA + trained GEM rows) into a standalone checkpoint.

The base is always loaded unquantised in float32, also for an adapter trained on a 4-bit
base (QLoRA): the LoRA deltas are added to the original weights, never to dequantised
ones, and the result is cast to the requested dtype only when saved. The merged folder is
a plain Hugging Face checkpoint (``AutoModelForCausalLM`` loads it) with a resized
vocabulary, the tokenizer with the GEM tokens and ``gem_config.json`` (so ``GEMModel``
treats it as a merged GEM checkpoint), plus ``merge_report.json``.

Tied embeddings stay tied unless the merge really makes the input and output matrices
differ (a LoRA on the output embedding); then the output matrix is untied first, so the
input embedding is never changed by an output-side delta, and the report says so.

A gated adapter (``adapter_scope: gem``, k = 1) is merged the other way (``gated``): its GEM
rows are folded in, its LoRA is kept apart as a PEFT activated LoRA invoked by the GEM token
(``alora/``), so plain text still runs the base's weights alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compat import _unwrapped, check_compatibility, embedding_targets, spec_from_folder
from ..errors import GEMError
from ..files import AdapterFolder, atomic_output, check_output, parse_dtype, read_adapter
from .gated import is_gated, require_activatable, write_gated_merged
from .merge_checks import (
    PROBE_LOGIT_TOLERANCE,
    PROBE_MIN_COSINE,
    PROBE_TEXTS,
    adapter_model,
    load_float32_base,
    max_lora_delta,
    shares_embeddings,
)

MERGE_REPORT = "merge_report.json"


@dataclass
class MergeReport:
    """What ``merge`` did, with the numbers that show it was faithful."""

    out: str
    base: str
    adapter: str
    dtype: str
    max_abs_weight_diff: float | None  # saved merged tensors vs the base's, over the base's rows
    max_weight_diff_tensor: str | None
    changed_tensors: int
    compared_tensors: int
    max_lora_delta: float  # largest |scaling * B @ A| entry folded in (float32)
    gem_token_ids: list[int]
    embedding_rows: tuple[int, int]  # before, after
    tied_base: bool
    tied_output: bool
    untied_reason: str | None
    trained_in_4bit: bool | None
    probe_min_cosine: float  # GEM embeddings, merged vs adapter model (float32, before casting)
    probe_max_logit_diff: float
    largest_changes: list[tuple[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    # a gated adapter (adapter_scope gem): the folder of its LoRA, kept apart as a PEFT activated LoRA;
    # probe_max_logit_diff is then the merged model's plain-text logits against the base's
    activated_lora: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        """A short human-readable summary."""
        tie = ("tied (kept)" if self.tied_output else f"untied: {self.untied_reason}") if self.tied_base else "untied (as the base)"
        diff = "not measured (base weights not in safetensors)" if self.max_abs_weight_diff is None else (
            f"{self.max_abs_weight_diff:.3e} ({self.max_weight_diff_tensor}; {self.changed_tensors}/{self.compared_tensors} tensors changed)")
        lines = [
            f"merged {self.adapter} into {self.base} -> {self.out} ({self.dtype})",
            f"largest weight change vs base: {diff}",
            f"largest LoRA delta entry: {self.max_lora_delta:.3e}",
            f"vocabulary rows: {self.embedding_rows[0]} -> {self.embedding_rows[1]} (GEM token ids {self.gem_token_ids})",
            f"embeddings: {tie}",
            f"check vs adapter model (float32): min cosine {self.probe_min_cosine:.6f}, max logit diff {self.probe_max_logit_diff:.2e}",
        ]
        if self.activated_lora:
            lines[-1] = (f"check vs adapter model (float32): min cosine {self.probe_min_cosine:.6f}; plain text vs base: "
                         f"max logit diff {self.probe_max_logit_diff:.2e}")
            lines.insert(3, f"gated LoRA kept apart as a PEFT activated LoRA in {self.activated_lora}/ "
                            f"(invoked by GEM token id {self.gem_token_ids[0]}): plain text runs the base")
        if self.trained_in_4bit:
            lines.append("adapter was trained on a 4-bit base; merged into the full-precision base")
        return lines


def merge(
    base: str | os.PathLike | None,
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    dtype: str = "float32",
    force: bool = False,
    allow_pickle: bool = False,
) -> MergeReport:
    """Fold ``adapter`` into ``base`` and write a standalone checkpoint to ``out``.

    ``base`` None means the base recorded in the adapter's ``gem_config.json``. Everything
    is checked before a weight is loaded; ``out`` appears only when complete.
    """
    started = time.time()
    parse_dtype(dtype)
    check_output(out, force, (adapter,))
    folder = read_adapter(adapter, allow_pickle=allow_pickle)
    require_gem(folder, "merge")
    base_name = str(base) if base is not None else recorded_base(folder)
    base_path, spec = spec_from_folder(base_name)
    check_output(out, force, (adapter, base_path))
    check_compatibility(folder, spec)
    if is_gated(folder):
        require_activatable(folder, spec, "merge")
    with atomic_output(out, force) as staging:
        if is_gated(folder):
            info = write_gated_merged(base_path, base_name, folder, staging, dtype, out)
            info.update(compare_checkpoints(base_path, staging))
        else:
            info = write_merged(base_path, base_name, folder, spec, staging, dtype)
        report = MergeReport(out=str(out), base=base_name, adapter=str(adapter), dtype=dtype, **info)
        report.seconds = round(time.time() - started, 2)
        (staging / MERGE_REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def require_gem(folder: AdapterFolder, action: str) -> None:
    """Refuse a plain LoRA where a GEM adapter is needed."""
    if not folder.is_gem:
        raise GEMError(
            f"{folder.path} is a plain LoRA adapter (no gem_config.json); {action} needs a GEM adapter - "
            "combine it with one through `gem stack` first"
        )


def require_unscoped(folder: AdapterFolder, action: str) -> None:
    """Refuse an adapter of ``adapter_scope`` gem: folded into the weights, its delta would reach every token."""
    if folder.gem_config is not None and folder.gem_config.adapter_scope != "all":
        raise GEMError(
            f"adapter {folder.path} has adapter_scope {folder.gem_config.adapter_scope!r} (its LoRA applies from the GEM "
            f"tokens on only); {action} would apply it to every token - serve it with `gem serve`, or train with "
            "adapter_scope: all"
        )


def recorded_base(folder: AdapterFolder) -> str:
    """The base model named in the adapter's ``gem_config.json``."""
    name = folder.gem_config.base_model if folder.gem_config else None
    if not name:
        raise GEMError(f"adapter {folder.path} does not record its base model; pass --base")
    return str(name)


def write_merged(base_path: str, base_name: str, folder: AdapterFolder, spec, staging: Path, dtype: str) -> dict[str, Any]:
    """Build the merged model in float32, verify it, save it cast to ``dtype``; return report fields."""
    from ..version import __version__
    from ..config import base_fingerprint

    merged = build_merged(base_path, folder, spec)
    lm = merged.pop("model")
    lm.to(parse_dtype(dtype))
    lm.save_pretrained(staging)
    merged.pop("tokenizer").save_pretrained(staging)
    config = dataclasses.replace(
        folder.gem_config, base_model=base_name, base_fingerprint=base_fingerprint(lm.config), library_version=__version__
    )
    config.save(staging)
    aliases = {}
    if not merged["tied_output"] and merged["tied_base"]:
        aliases[merged["output_name"]] = merged["input_name"]
    merged.update(compare_checkpoints(base_path, staging, aliases))
    for key in ("input_name", "output_name"):
        merged.pop(key)
    return merged


def build_merged(base_path: str, folder: AdapterFolder, spec) -> dict[str, Any]:
    """The merged float32 model in memory, checked against the adapter model on probe texts."""
    import torch

    lm = load_float32_base(base_path)
    rows_before = int(lm.get_input_embeddings().weight.shape[0])
    tied = shares_embeddings(lm)
    targets = embedding_targets(folder, spec)
    untie_first = tied and bool(targets)
    if untie_first:
        untie(lm)
    gem = adapter_model(lm, folder, base_path)
    if untie_first:
        copy_rows_to_output(gem)  # what PEFT's tied token rows do for the output matrix
    probes = probe_outputs(gem)
    max_delta = max_lora_delta(gem.model)
    lm = gem.model.merge_and_unload()
    leftovers = [name for name, module in lm.named_modules() if type(module).__module__.startswith("peft")]
    if leftovers:
        raise GEMError(f"PEFT could not unload every adapter layer ({leftovers[:3]}); this adapter layout cannot be merged")
    gem.model = lm
    untied_reason = None
    if untie_first:
        if torch.equal(lm.get_input_embeddings().weight, lm.get_output_embeddings().weight):
            retie(lm)
        else:
            untied_reason = f"the LoRA on {', '.join(targets)} makes the output embedding differ from the input embedding"
    check = probe_outputs(gem)
    cosine = min(torch.nn.functional.cosine_similarity(a, b, dim=0).item() for a, b in zip(probes["emb"], check["emb"]))
    logit_diff = max((a - b).abs().max().item() for a, b in zip(probes["logits"], check["logits"]))
    scale = max(1.0, max(logits.abs().max().item() for logits in probes["logits"]))
    if cosine < PROBE_MIN_COSINE or logit_diff > PROBE_LOGIT_TOLERANCE * scale:
        raise GEMError(
            f"the merged model differs from the adapter model (embedding cosine {cosine:.6f}, logit diff "
            f"{logit_diff:.3g}); nothing was written - report this adapter's layout"
        )
    names = {id(p): n for n, p in lm.named_parameters(remove_duplicate=False)}
    return {
        "model": lm,
        "tokenizer": gem.tokenizer,
        "max_lora_delta": max_delta,
        "gem_token_ids": list(gem.gem_token_ids),
        "embedding_rows": (rows_before, int(lm.get_input_embeddings().weight.shape[0])),
        "tied_base": tied,
        "tied_output": shares_embeddings(lm),
        "untied_reason": untied_reason,
        "trained_in_4bit": folder.trained_in_4bit,
        "probe_min_cosine": cosine,
        "probe_max_logit_diff": logit_diff,
        "input_name": names.get(id(lm.get_input_embeddings().weight)),
        "output_name": names.get(id(lm.get_output_embeddings().weight)) if lm.get_output_embeddings() is not None else None,
    }


def untie(lm) -> None:
    """Give the output embedding its own copy of the matrix (config says untied)."""
    import torch

    output = _unwrapped(lm.get_output_embeddings())
    output.weight = torch.nn.Parameter(output.weight.detach().clone(), requires_grad=False)
    _set_tied(lm, False)


def retie(lm) -> None:
    """Make the output embedding share the input matrix again."""
    _unwrapped(lm.get_output_embeddings()).weight = _unwrapped(lm.get_input_embeddings()).weight
    _set_tied(lm, True)


def _set_tied(lm, value: bool) -> None:
    lm.config.tie_word_embeddings = value
    text = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    if text is not lm.config:
        text.tie_word_embeddings = value


def copy_rows_to_output(gem) -> None:
    """With an untied copy, the output matrix gets the trained GEM rows PEFT would tie to it."""
    import torch

    output = _unwrapped(gem._causal_lm.get_output_embeddings())
    for module in gem.model.modules():
        deltas = getattr(module, "trainable_tokens_delta", None)
        if deltas is None or getattr(module, "tied_adapter", None) is not None:
            continue
        for name in module.active_adapters:
            if name in deltas:
                with torch.no_grad():
                    output.weight[module.token_indices[name]] = deltas[name].detach().to(output.weight)


def probe_outputs(gem) -> dict[str, list]:
    """GEM embeddings and logits of the probe texts (one text per forward, no padding)."""
    import torch

    embeddings = gem.encode(list(PROBE_TEXTS), normalize=True, convert_to_tensor=True)
    logits = []
    suffix = "".join(gem.config.gem_tokens)
    with torch.inference_mode():
        for text in PROBE_TEXTS:
            ids = gem.tokenizer(text + suffix, return_tensors="pt")["input_ids"].to(gem.device)
            logits.append(gem.model(input_ids=ids).logits[0].float().cpu())
    return {"emb": list(embeddings), "logits": logits}


def _safetensors_map(folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {key: folder / name for key, name in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return {}
    from safetensors import safe_open

    found = {}
    for path in files:
        with safe_open(str(path), "pt") as handle:
            found.update({key: path for key in handle.keys()})
    return found


def compare_checkpoints(base_folder: str | os.PathLike, merged_folder: str | os.PathLike,
                        aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """Largest |merged - base| per tensor, streamed from the safetensors files.

    Embedding-shaped tensors are compared over the base's rows (the GEM rows are new).
    ``aliases`` maps a merged key absent from the base to the base key it started from
    (an output matrix untied from the input embedding).
    """
    from safetensors import safe_open

    base_map, merged_map = _safetensors_map(Path(base_folder)), _safetensors_map(Path(merged_folder))
    empty = {"max_abs_weight_diff": None, "max_weight_diff_tensor": None, "changed_tensors": 0,
             "compared_tensors": 0, "largest_changes": []}
    if not base_map or not merged_map:
        return empty
    pairs = [(key, key) for key in merged_map if key in base_map]
    pairs += [(key, source) for key, source in (aliases or {}).items() if key in merged_map and source in base_map]
    diffs: dict[str, float] = {}
    for merged_key, base_key in pairs:
        with safe_open(str(merged_map[merged_key]), "pt") as m, safe_open(str(base_map[base_key]), "pt") as b:
            new, old = m.get_tensor(merged_key).float(), b.get_tensor(base_key).float()
        if new.shape != old.shape:
            if new.dim() != old.dim() or new.shape[1:] != old.shape[1:] or new.shape[0] < old.shape[0]:
                raise GEMError(f"merged tensor {merged_key} has shape {tuple(new.shape)}, base {tuple(old.shape)}")
            new = new[: old.shape[0]]
        diffs[merged_key] = (new - old).abs().max().item() if new.numel() else 0.0
    if not diffs:
        return empty
    ranked = sorted(diffs.items(), key=lambda item: -item[1])
    return {
        "max_abs_weight_diff": ranked[0][1],
        "max_weight_diff_tensor": ranked[0][0],
        "changed_tensors": sum(1 for value in diffs.values() if value > 0),
        "compared_tensors": len(diffs),
        "largest_changes": ranked[:5],
    }


__all__ = ["MERGE_REPORT", "MergeReport", "build_merged", "compare_checkpoints", "merge"]
