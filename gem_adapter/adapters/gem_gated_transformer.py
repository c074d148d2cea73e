"""sentence-transformers module for a gated GEM export: the activated LoRA run the way PEFT runs it.

Copied as it is into every ``gem export --format sentence-transformers`` folder of a gated adapter
(``adapter_scope: gem``) and loaded by ``SentenceTransformer(folder, trust_remote_code=True)``.
It needs sentence-transformers >= 6 and peft >= 0.18, not gem-adapter: it imports nothing of it.

Why code at all: the adapter's LoRA runs from the GEM token on, as a PEFT activated LoRA
(``alora/``, invoked by the GEM token). PEFT works out where that starts only inside
``PeftModelForCausalLM.forward``. sentence-transformers loads an adapter through transformers'
PEFT integration, which never does, so there the LoRA stays off and the embeddings are silently
the base's. This module wraps the causal LM in ``PeftModel`` itself; the embedding is the last
layer's hidden state (``hidden_states[-1]``, after the final norm) that this forward returns,
read at the last token (the GEM token the tokenizer appends) by the ``lasttoken`` pooling.
"""

from __future__ import annotations

import json
from pathlib import Path

from sentence_transformers.base.modules.transformer import Transformer

ACTIVATED_LORA = "alora"  # the folder of the activated LoRA, beside the merged weights
GATED_ARCHITECTURE_PREFIX = "GEMGated"  # config.json marks the merged weights so that stock engines refuse them


class GatedTransformer(Transformer):
    """``Transformer`` over a causal LM whose activated LoRA (``alora/``) PEFT runs in the forward pass."""

    def _load_model(self, model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs):
        from peft import PeftModel

        if backend != "torch":
            raise ValueError(f"a gated GEM export runs with the torch backend only, not {backend!r}")
        model = super()._load_model(model_name_or_path, transformer_task, config, backend, is_peft_model, **model_kwargs)
        hub_kwargs = {key: model_kwargs[key] for key in ("cache_dir", "token", "revision") if key in model_kwargs}
        return PeftModel.from_pretrained(model, model_name_or_path, subfolder=ACTIVATED_LORA, **hub_kwargs).eval()

    def forward(self, features: dict, **kwargs) -> dict:
        # the embedding is read from the hidden states; the logits of the last position are all the LM head computes
        return super().forward(features, logits_to_keep=1, **kwargs)

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """The merged weights at ``output_path``, the activated LoRA in its ``alora/``, tokenizer and module config."""
        base = self.model.get_base_model()
        weights = {key.replace(".base_layer.", "."): value for key, value in base.state_dict().items()
                   if ".lora_" not in key}
        base.save_pretrained(output_path, state_dict=weights, safe_serialization=safe_serialization)
        config_path = Path(output_path) / "config.json"
        settings = json.loads(config_path.read_text())
        settings["architectures"] = [GATED_ARCHITECTURE_PREFIX + name for name in settings.get("architectures") or []
                                     if not name.startswith(GATED_ARCHITECTURE_PREFIX)] or settings["architectures"]
        config_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        self.model.save_pretrained(str(Path(output_path) / ACTIVATED_LORA), safe_serialization=safe_serialization)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)
