"""What ``merge`` and the gated merge check on loaded weights: probe texts and tolerances, LoRA sizes, tying."""

from __future__ import annotations

from ..compat import _unwrapped

PROBE_TEXTS = ("The capital of France is", "A man is playing a guitar.", "")
# Float32 merge vs the adapter model: differences are rounding only.
PROBE_MIN_COSINE = 0.9999
PROBE_LOGIT_TOLERANCE = 1e-3  # relative to the largest logit


def shares_embeddings(lm) -> bool:
    """True when the input and output embeddings are one matrix."""
    output = lm.get_output_embeddings()
    return output is not None and _unwrapped(output).weight is _unwrapped(lm.get_input_embeddings()).weight


def max_lora_delta(model) -> float:
    """The largest entry of any active LoRA delta (``scaling * B @ A``)."""
    import torch
    from peft.tuners.lora import LoraLayer

    largest = 0.0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            for name in module.active_adapters:
                if name in module.lora_A or name in getattr(module, "lora_embedding_A", {}):
                    largest = max(largest, module.get_delta_weight(name).abs().max().item())
    return largest
