"""What ``merge`` and the gated merge load and check: the float32 base, the adapter on it, probe texts
and tolerances, LoRA sizes, tying."""

from __future__ import annotations

import dataclasses

from .. import quiet
from ..compat import _unwrapped, tokenizer_source
from ..errors import GEMError
from ..files import AdapterFolder

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


def load_float32_base(base_path: str):
    """The base causal LM in float32, refused when it is stored quantised (merging needs its full weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if getattr(lm.config, "quantization_config", None) is not None:
        raise GEMError(f"base {base_path} is stored quantised ({type(lm.config.quantization_config).__name__}); merging "
                       "needs the full-precision weights - pass the unquantised base model")
    return lm


def adapter_model(lm, folder: AdapterFolder, base_path: str):
    """A ``GEMModel`` of ``lm`` with the adapter in ``folder`` loaded through PEFT, frozen, in eval mode.

    The tokenizer is the adapter's, or the base's when the adapter folder carries none.
    """
    quiet.import_peft()  # before PEFT is first imported: without bitsandbytes (quiet.py)
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ..model import GEMModel

    gem = GEMModel(lm, AutoTokenizer.from_pretrained(tokenizer_source(folder.path, base_path)),
                   dataclasses.replace(folder.gem_config))
    with quiet.peft_calls():
        gem.model = PeftModel.from_pretrained(gem.model, str(folder.path), is_trainable=False)
    gem.model.eval()
    return gem
