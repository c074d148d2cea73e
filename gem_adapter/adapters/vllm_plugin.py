"""gem-adapter's vLLM plugin: serve a merged gated GEM model (``gem merge`` / ``gem export --format vllm``).

vLLM loads every ``vllm.general_plugins`` entry point in each of its processes and calls it;
this one (``register``, named in pyproject.toml) registers the architectures a gated merge
writes into ``config.json`` (``GEMGatedLlamaForCausalLM`` ...), served by the classes in
``vllm_gated``. A vLLM without the plugin does not know those names and refuses the folder,
instead of loading the base without the adapter's LoRA (vLLM has no activated LoRA and
drops adapter keys it does not know) and serving wrong embeddings with no error.

This module imports nothing of vLLM: registration names the classes by import path, so
vLLM imports them only in the processes that build the model.
"""

from __future__ import annotations

# vLLM base classes the gate is written for: (vLLM module, class); all name their projections alike
SUPPORTED_BASES: dict[str, str] = {
    "LlamaForCausalLM": "vllm.model_executor.models.llama",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
    "Qwen3ForCausalLM": "vllm.model_executor.models.qwen3",
}
GATED_PREFIX = "GEMGated"  # gated.GATED_ARCHITECTURE_PREFIX, repeated so that this module imports nothing


def register() -> None:
    """Register the gated architectures with vLLM's ``ModelRegistry`` (idempotent, as vLLM may call it often)."""
    from vllm import ModelRegistry

    for base in SUPPORTED_BASES:
        ModelRegistry.register_model(GATED_PREFIX + base, f"gem_adapter.adapters.vllm_gated:{GATED_PREFIX}{base}")


__all__ = ["SUPPORTED_BASES", "register"]
