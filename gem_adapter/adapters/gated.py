"""A gated (``adapter_scope: gem``) adapter as a folder stock tools load: merged GEM rows and an activated LoRA.

A gated adapter's LoRA applies from the GEM token on (``scope``). That is PEFT's activated
LoRA (aLoRA, ``LoraConfig(alora_invocation_tokens=[...])``, PEFT >= 0.18): in
``PeftModelForCausalLM.forward`` and ``generate`` PEFT finds the *last* occurrence of the
invocation sequence in each row and runs the LoRA from its first token to the end of the
row, the invocation included; the tokens before it get the base alone. With the GEM token as
the invocation and k = 1 that is exactly what the GEM mask and the gate compute: the text
through the base, the GEM token through base + LoRA, reading the text's base keys and values.
So the LoRA is kept apart, not folded in, and ``write_gated_merged`` writes:

    out/                     the base with the trained GEM rows folded into its embedding (AutoModelForCausalLM)
      config.json            architectures GEMGated<Base> (stock engines refuse it; the vLLM plugin serves it)
      generation_config.json the GEM token suppressed, so generate never emits it
      tokenizer files        the generation tokenizer: GEM token known, nothing appended
      embedding-tokenizer/   appends template and GEM token to plain text (``engine_tokenizer``)
      alora/                 the LoRA as a PEFT activated LoRA, invoked by the GEM token
      gem_config.json

Text without the GEM token runs the base's weights only: generation is the base's. Before
anything is written the folder's own forward (aLoRA through ``PeftModelForCausalLM``, the
embedding tokenizer, the last token's state) is checked against ``GEMModel.encode``.

Refused, before any weight loads: k > 1 (each GEM token would see the ones before it, which
the GEM mask forbids and no aLoRA or causal engine can express), pooling other than GEM,
a LoRA on an embedding matrix or any LoRA variant (PEFT's aLoRA takes plain linear LoRA only).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

from .. import quiet, scope
from ..compat import embedding_targets
from ..errors import GEMError
from ..files import AdapterFolder
from .engine_tokenizer import EMBEDDING_TOKENIZER, embedding_tokenizer, save_tokenizer
from .merge_checks import (
    PROBE_LOGIT_TOLERANCE,
    PROBE_MIN_COSINE,
    PROBE_TEXTS,
    adapter_model,
    load_float32_base,
    max_lora_delta,
    shares_embeddings,
)

GATE_CONFIG_KEY = "gem_gate"  # in the merged config.json: what the vLLM plugin reads
GATED_ARCHITECTURE_PREFIX = "GEMGated"
# LoraConfig fields the activated LoRA cannot carry (set in the gated adapter's adapter_config.json)
_UNSUPPORTED = {"use_dora": "DoRA", "use_qalora": "QALoRA", "lora_bias": "LoRA bias", "modules_to_save": "modules_to_save",
                "target_parameters": "target_parameters", "layer_replication": "layer_replication"}


def is_gated(folder: AdapterFolder) -> bool:
    """Whether ``folder`` is a GEM adapter of scope ``gem``."""
    return folder.gem_config is not None and folder.gem_config.adapter_scope == "gem"


def require_activatable(folder: AdapterFolder, spec, action: str) -> None:
    """Refuse, in one line, a gated adapter that a PEFT activated LoRA cannot reproduce."""
    config = folder.gem_config
    if config.num_gem_tokens != 1:
        raise GEMError(
            f"adapter {folder.path} has k = {config.num_gem_tokens} GEM tokens; outside gem-adapter each GEM token would "
            f"see the ones before it, which the GEM mask forbids - {action} needs num_gem_tokens: 1 "
            "(gem train --set num_gem_tokens=1), or serve this adapter with `gem serve`"
        )
    if config.pooling != "gem":
        raise GEMError(f"adapter {folder.path} pools with {config.pooling!r}; {action} of a gated adapter takes GEM pooling only")
    targets = embedding_targets(folder, spec)
    if targets:
        raise GEMError(f"gated adapter {folder.path} has a LoRA on {', '.join(targets)}; PEFT's activated LoRA takes "
                       f"linear layers only - {action} needs an adapter without embedding targets")
    used = [words for key, words in _UNSUPPORTED.items() if folder.config.get(key)]
    if used:
        raise GEMError(f"gated adapter {folder.path} uses {', '.join(used)}; PEFT's activated LoRA takes plain LoRA only")


def write_gated_merged(base_path: str, base_name: str, folder: AdapterFolder, staging: Path, dtype: str,
                       out: str | Path) -> dict[str, Any]:
    """Build, check and save the merged gated folder (layout above) in ``staging``, to become ``out``; return report fields."""
    from ..config import base_fingerprint
    from ..files import parse_dtype
    from ..version import __version__

    built = build_gated(base_path, folder)
    lora_model = built.pop("model")
    lora_model.save_pretrained(staging / scope.ACTIVATED_LORA, save_embedding_layers=False)
    (staging / scope.ACTIVATED_LORA / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    _point_adapter_at(staging / scope.ACTIVATED_LORA, Path(out).resolve())
    lm = lora_model.unload()  # the aLoRA layers out again, unmerged: the base with the GEM rows
    gem_ids = built["gem_token_ids"]
    if lm.generation_config is not None:
        lm.generation_config.suppress_tokens = sorted(set(lm.generation_config.suppress_tokens or []) | set(gem_ids))
    lm.to(parse_dtype(dtype))
    lm.save_pretrained(staging)
    tokenizer = built.pop("tokenizer")
    tokenizer.save_pretrained(staging)
    save_tokenizer(embedding_tokenizer(tokenizer, folder.gem_config), staging / EMBEDDING_TOKENIZER)
    _mark_gated(staging / "config.json", gem_ids)
    config = dataclasses.replace(folder.gem_config, base_model=base_name, base_fingerprint=base_fingerprint(lm.config),
                                 library_version=__version__)
    config.save(staging)
    return built


def _point_adapter_at(adapter_dir: Path, merged: Path) -> None:
    """The activated LoRA's base is the merged folder around it (what ``AutoPeftModelForCausalLM`` loads)."""
    path = adapter_dir / "adapter_config.json"
    settings = json.loads(path.read_text())
    settings["base_model_name_or_path"] = str(merged)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _mark_gated(config_path: Path, gem_ids: list[int]) -> None:
    """Rename the architecture (stock engines refuse what they cannot gate) and record the gate for the plugin."""
    settings = json.loads(config_path.read_text())
    architectures = settings.get("architectures") or []
    if len(architectures) != 1:
        raise GEMError(f"the base names {len(architectures)} architectures ({architectures}); a gated merge needs one")
    settings["architectures"] = [GATED_ARCHITECTURE_PREFIX + architectures[0]]
    settings[GATE_CONFIG_KEY] = {"base_architecture": architectures[0], "invocation_token_ids": list(gem_ids),
                                 "activated_lora": scope.ACTIVATED_LORA}
    config_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def build_gated(base_path: str, folder: AdapterFolder) -> dict[str, Any]:
    """The float32 base with the GEM rows folded in, carrying the LoRA as an activated LoRA, checked.

    Checked on the probe texts before returning: the activated LoRA's embedding (embedding
    tokenizer, ``PeftModelForCausalLM`` forward, last token) against ``GEMModel.encode`` of the
    adapter, and its logits on plain text against the base's.
    """
    import torch

    quiet.import_peft()  # before PEFT is imported: without bitsandbytes (quiet.py)
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    from transformers import AutoTokenizer

    lm = load_float32_base(base_path)
    rows_before = int(lm.get_input_embeddings().weight.shape[0])
    tied = shares_embeddings(lm)
    base_tokenizer = AutoTokenizer.from_pretrained(base_path)
    base_logits = plain_logits(lm, base_tokenizer, PROBE_TEXTS)

    gem = adapter_model(lm, folder, base_path)
    scope.install(gem.model, "gem")
    reference = gem.encode(list(PROBE_TEXTS), normalize=True, convert_to_tensor=True).float()
    largest_delta = max_lora_delta(gem.model)
    source = gem.model.peft_config[gem.model.active_adapter]
    lora_weights = {key: value.detach().clone() for key, value in _adapter_state(gem.model).items()}
    for module in gem.model.modules():
        if isinstance(module, TrainableTokensLayer) and not module.merged:
            module.merge()
    lm = gem.model.unload()  # LoRA layers out unmerged; the merged GEM rows stay in the embedding
    scope.install(gem.model, "all")

    gem_ids = list(gem.gem_token_ids)
    lora_model = activated_lora(lm, source, gem_ids, lora_weights)
    embedder = embedding_tokenizer(gem.tokenizer, folder.gem_config)
    got = activated_embeddings(lora_model, embedder, PROBE_TEXTS)
    cosine = float(torch.nn.functional.cosine_similarity(got, reference, dim=-1).min())
    merged_logits = plain_logits(lora_model, base_tokenizer, PROBE_TEXTS)
    logit_diff = max(float((a[:, :rows_before] - b).abs().max()) if b.numel() else 0.0
                     for a, b in zip(merged_logits, base_logits))
    scale = max([1.0] + [float(b.abs().max()) for b in base_logits if b.numel()])
    if cosine < PROBE_MIN_COSINE or logit_diff > PROBE_LOGIT_TOLERANCE * scale:
        raise GEMError(f"the activated LoRA differs from the gated adapter (embedding cosine {cosine:.6f}, plain-text "
                       f"logit diff from the base {logit_diff:.3g}); nothing was written - report this adapter's layout")
    return {
        "model": lora_model,
        "tokenizer": gem.tokenizer,
        "max_lora_delta": largest_delta,
        "gem_token_ids": gem_ids,
        "embedding_rows": (rows_before, int(lm.get_input_embeddings().weight.shape[0])),
        "tied_base": tied,
        "tied_output": shares_embeddings(lm),
        "untied_reason": None,
        "trained_in_4bit": folder.trained_in_4bit,
        "probe_min_cosine": cosine,
        "probe_max_logit_diff": logit_diff,
        "activated_lora": scope.ACTIVATED_LORA,
    }


def _adapter_state(peft_model) -> dict[str, Any]:
    """The LoRA A/B tensors of the active adapter, keyed as PEFT saves them (no token rows)."""
    from peft import get_peft_model_state_dict

    with quiet.peft_calls():
        state = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    return {key: value for key, value in state.items() if ".lora_A." in key or ".lora_B." in key}


def activated_lora(lm, source, gem_ids: list[int], lora_weights: dict[str, Any]):
    """``lm`` wrapped in a PEFT activated LoRA with ``source``'s settings and ``lora_weights``, invoked by ``gem_ids``."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    settings = {f.name: copy.deepcopy(getattr(source, f.name)) for f in dataclasses.fields(LoraConfig)
                if f.init and hasattr(source, f.name)}
    settings.update(task_type="CAUSAL_LM", trainable_token_indices=None, alora_invocation_tokens=list(gem_ids),
                    inference_mode=True, init_lora_weights=True)
    settings.pop("peft_type", None)
    config = LoraConfig(**settings)
    with quiet.peft_calls():
        model = get_peft_model(lm, config)
        result = set_peft_model_state_dict(model, lora_weights)
    missing = [key for key in result.missing_keys if ".lora_A." in key or ".lora_B." in key]
    if missing or result.unexpected_keys:
        raise GEMError(f"the activated LoRA does not take the adapter's LoRA weights (missing {missing[:3]}, unexpected "
                       f"{list(result.unexpected_keys)[:3]}); report this adapter's layout")
    return model.eval()


def activated_embeddings(model, tokenizer, texts) -> Any:
    """Normalised float32 embeddings (texts, dim) as a stock user computes them: the activated LoRA's last state.

    One text per forward, so no padding is involved; the embedding tokenizer appends the
    GEM token, PEFT's forward finds it and runs the LoRA there.
    """
    import torch

    rows = []
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, return_tensors="pt", truncation=True)
            output = model(**encoded, output_hidden_states=True, logits_to_keep=1)
            rows.append(output.hidden_states[-1][0, -1].float())
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def plain_logits(model, tokenizer, texts) -> list:
    """Float32 logits of each text (no GEM token), one text per forward."""
    import torch

    logits = []
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            logits.append(model(input_ids=ids).logits[0].float() if ids.shape[1] else torch.zeros(0))
    return logits


__all__ = ["GATED_ARCHITECTURE_PREFIX", "GATE_CONFIG_KEY", "build_gated", "is_gated", "require_activatable",
           "write_gated_merged"]
