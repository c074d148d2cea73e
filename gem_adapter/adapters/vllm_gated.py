"""vLLM models for merged gated GEM checkpoints: the base's own vLLM model, the LoRA added at the GEM token.

Imported by vLLM only, through ``vllm_plugin.register`` (it needs vLLM installed). A merged
gated checkpoint (``gated``) is the base with its GEM rows plus ``alora/``, the LoRA as a PEFT
activated LoRA invoked by the GEM token; ``config.json`` names ``GEMGated<Base>`` and records
the GEM token ids under ``gem_gate``. What the classes here compute:

* pooling runner (``vllm serve DIR --runner pooling --tokenizer DIR/embedding-tokenizer``): the
  base, plus each LoRA delta at the GEM token that ends a prompt (the embedding tokenizer
  appends it, vLLM's LAST pooler reads its state). That is ``GEMModel.encode`` for k = 1: the
  text through the base, the GEM token through base + LoRA reading the text's base keys and
  values. A GEM token that the text itself contains (not at its end) stays on the base, as in
  ``encode`` and PEFT's aLoRA (which starts at the last occurrence).
* generate runner: the base alone, with the GEM tokens' logits at -inf: ``GEMModel.generate``.

How: vLLM fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``, so their LoRAs are
stacked into one A and a block B that puts each delta in its slice of the fused output
(scaling folded into B). After the weights load, each projection the LoRA targets gets a
forward that adds ``gate * B (A x)``. The gate is a buffer the model's forward fills in place
before the decoder runs, from the token ids and the batch's ``query_start_loc`` (where each
request's tokens end), so the layers need no argument vLLM does not pass. Tensor and pipeline
parallelism are refused (one process holds the whole model here).
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

GATE_CONFIG_KEY = "gem_gate"  # gated.GATE_CONFIG_KEY
# PEFT's projection -> (vLLM's module, slot in its fused output; None: not fused)
PROJECTIONS: dict[str, tuple[str, int | None]] = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1), "o_proj": ("o_proj", None), "down_proj": ("down_proj", None),
}
_KEY = re.compile(r"^base_model\.model\.(?P<parent>.+)\.(?P<projection>\w+_proj)\.lora_(?P<part>[AB])\.weight$")


def _gated_forward(layer, forward, x: torch.Tensor):
    """``layer``'s own forward, plus the gated LoRA delta (computed in float32) at the rows the gate marks."""
    out = forward(x)
    output, bias = out if isinstance(out, tuple) else (out, None)
    gate = layer.gem_gate[: x.shape[0]].unsqueeze(-1)
    delta = (x.to(layer.gem_lora_a.dtype) @ layer.gem_lora_a.T) @ layer.gem_lora_b.T
    output = output + (delta * gate).to(output.dtype)
    return (output, bias) if isinstance(out, tuple) else output


class _GatedLoRA:
    """Mixin over a vLLM ``*ForCausalLM``: the activated LoRA of ``alora/`` at the GEM token (pooling runner only)."""

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        model_config = vllm_config.model_config
        gate = getattr(model_config.hf_config, GATE_CONFIG_KEY, None)
        if not gate:
            raise ValueError(f"{model_config.model} has no {GATE_CONFIG_KEY!r} in config.json; it is not a gated GEM merge "
                             "- make it with `gem merge` or `gem export --format vllm`")
        ids = [int(i) for i in gate["invocation_token_ids"]]
        if len(ids) != 1:
            raise ValueError(f"{model_config.model} is invoked by {len(ids)} GEM tokens; the vLLM plugin serves k = 1 only")
        parallel = vllm_config.parallel_config
        if parallel.tensor_parallel_size != 1 or parallel.pipeline_parallel_size != 1:
            raise ValueError("gem-adapter's vLLM plugin runs a gated GEM model in one process: use "
                             "--tensor-parallel-size 1 --pipeline-parallel-size 1")
        self.gem_token_ids = ids
        self.gem_source = (model_config.model, model_config.revision, gate.get("activated_lora", "alora"))
        self.gem_embeds = model_config.runner_type == "pooling"
        size = max(vllm_config.scheduler_config.max_num_batched_tokens, model_config.max_model_len)
        self.register_buffer("gem_gate", torch.zeros(size, dtype=torch.float32), persistent=False)
        self.gem_gated_layers = 0

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights):
        loaded = super().load_weights(weights)
        self.gem_gated_layers = self._install_gate()
        return loaded

    def _adapter_file(self, name: str) -> Path:
        model, revision, folder = self.gem_source
        if Path(model).is_dir():
            return Path(model) / folder / name
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model, f"{folder}/{name}", revision=revision))

    def _install_gate(self) -> int:
        """Read the activated LoRA, stack it per vLLM projection and wrap those projections; return their count."""
        from safetensors.torch import load_file

        config = json.loads(self._adapter_file("adapter_config.json").read_text())
        if list(config.get("alora_invocation_tokens") or []) != self.gem_token_ids:
            raise ValueError(f"the activated LoRA's invocation {config.get('alora_invocation_tokens')} is not the GEM token "
                             f"{self.gem_token_ids} of config.json; re-make the folder with `gem merge`")
        if config.get("alpha_pattern") or config.get("rank_pattern") or config.get("use_dora"):
            raise ValueError("the vLLM plugin takes a plain LoRA with one rank and alpha (no rank/alpha patterns, no DoRA)")
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
        scaling = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
        groups: dict[tuple[str, str], dict[int | None, dict[str, torch.Tensor]]] = {}
        for key, tensor in load_file(str(self._adapter_file("adapter_model.safetensors"))).items():
            match = _KEY.match(key)
            if match is None or match["projection"] not in PROJECTIONS:
                raise ValueError(f"the vLLM plugin cannot place the activated LoRA's tensor {key}")
            module, slot = PROJECTIONS[match["projection"]]
            groups.setdefault((match["parent"], module), {}).setdefault(slot, {})[match["part"]] = tensor.float()
        for (parent, module), slots in groups.items():
            self._wrap(self.get_submodule(f"{parent}.{module}"), slots, scaling)
        if not groups:
            raise ValueError("the activated LoRA holds no LoRA tensors")
        return len(groups)

    def _wrap(self, layer, slots: dict[int | None, dict[str, torch.Tensor]], scaling: float) -> None:
        sizes = list(layer.output_sizes) if None not in slots else [int(layer.output_size_per_partition)]
        ordered = sorted(slots, key=lambda slot: slot or 0)
        a = torch.cat([slots[slot]["A"] for slot in ordered])
        b = torch.zeros(sum(sizes), a.shape[0])
        column = 0
        for slot in ordered:
            lora_b = slots[slot]["B"]
            start = sum(sizes[: slot or 0])
            if lora_b.shape[0] != sizes[slot or 0]:
                raise ValueError(f"LoRA B of shape {tuple(lora_b.shape)} does not fit a projection of {sizes[slot or 0]} outputs")
            b[start: start + lora_b.shape[0], column: column + lora_b.shape[1]] = lora_b * scaling
            column += lora_b.shape[1]
        device = self.gem_gate.device
        layer.register_buffer("gem_lora_a", a.to(device), persistent=False)
        layer.register_buffer("gem_lora_b", b.to(device), persistent=False)
        layer.register_buffer("gem_gate", self.gem_gate, persistent=False)
        layer.forward = partial(_gated_forward, layer, layer.forward)

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None):
        self._fill_gate(input_ids, positions.shape[-1])
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)

    def _fill_gate(self, input_ids, count: int) -> None:
        """1 at each GEM token that ends a request's tokens in this batch (pooling runner), else 0."""
        from vllm.forward_context import get_forward_context, is_forward_context_available

        gate = self.gem_gate
        gate.zero_()
        if not self.gem_embeds:
            return
        if count > gate.shape[0]:
            raise ValueError(f"a batch of {count} tokens exceeds the gate's {gate.shape[0]}")
        metadata = get_forward_context().attn_metadata if is_forward_context_available() else None
        if isinstance(metadata, list):
            metadata = metadata[0] if metadata else None
        if isinstance(metadata, dict):
            metadata = next(iter(metadata.values()), None)
        if metadata is None:
            return  # vLLM's dummy run while profiling memory: no real text
        if input_ids is None:
            raise ValueError("a gated GEM model embeds token ids, not input embeddings")
        starts = getattr(metadata, "query_start_loc", None)
        if starts is None:
            raise ValueError(f"{type(metadata).__name__} has no query_start_loc; the vLLM plugin cannot find where requests end")
        ends = starts[1:].to(device=input_ids.device, dtype=torch.long) - 1
        ends = ends[(ends >= 0) & (ends < count)]
        last = torch.zeros(count, dtype=torch.bool, device=input_ids.device)
        last[ends] = True
        gate[:count] = (last & (input_ids[:count] == self.gem_token_ids[0])).to(gate.dtype)

    def compute_logits(self, hidden_states):
        return self._without_gem_tokens(super().compute_logits(hidden_states))

    def _without_gem_tokens(self, logits):
        if logits is not None:
            logits[..., self.gem_token_ids] = float("-inf")  # generation never emits a GEM token, as GEMModel.generate
        return logits


class _LocalLogits:
    """For bases with vLLM's local-argmax logits (sharded sampling): the GEM tokens masked there too."""

    def compute_logits_local(self, hidden_states):
        return self._without_gem_tokens(super().compute_logits_local(hidden_states))


class GEMGatedLlamaForCausalLM(_GatedLoRA, _LocalLogits, LlamaForCausalLM):
    """vLLM's Llama with a gated GEM adapter."""


class GEMGatedQwen2ForCausalLM(_GatedLoRA, Qwen2ForCausalLM):
    """vLLM's Qwen2 with a gated GEM adapter."""


class GEMGatedQwen3ForCausalLM(_GatedLoRA, _LocalLogits, Qwen3ForCausalLM):
    """vLLM's Qwen3 with a gated GEM adapter."""
