"""adapter_scope 'gem': the adapter changes the GEM tokens' view of a text, never the text itself.

With scope ``gem`` a trained adapter's LoRA applies from the GEM tokens on: a text without
GEM tokens (generation, perplexity) gets exactly the base model's logits, while the
embeddings are the trained ones. Such an adapter cannot be folded into the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_base, tiny_gem, tiny_training_config

from gem_adapter import GEMConfig, GEMConfigError, GEMError, GEMModel, runtime, scope
from gem_adapter.adapters import export, merge, stack
from gem_adapter.masking import Segment
from gem_adapter.training import train

TEXTS = ["the dog near the river", "a boat", "Sentence 3 talks about the tree."]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scope")


@pytest.fixture(scope="module")
def base(root) -> Path:
    return save_tiny_base(root / "base")


@pytest.fixture(scope="module")
def scoped(root, base) -> Path:
    """A tiny adapter trained with adapter_scope gem (k = 2, every sample through the GEM tokens, crop views)."""
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(
        f"Sentence {i} talks about the {w} near the river. Another remark follows it." for i, w in
        enumerate(["dog", "cat", "boat", "tree"] * 24)))
    config = tiny_training_config(base, corpus, root / "scoped", save_steps=100, max_steps=3, num_gem_tokens=2,
                                  gem_fraction=1.0, contrastive_weight=1.0, adapter_scope="gem")
    return train(config)


def plain_logits(gem: GEMModel, text: str) -> torch.Tensor:
    ids = torch.tensor([gem.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return gem.model(input_ids=ids).logits


def test_gate_covers_the_gem_tokens_and_the_suffix_only():
    segments = torch.tensor([[Segment.PREFIX, Segment.PREFIX, Segment.GEM, Segment.GEM, Segment.SUFFIX, Segment.PAD]])
    assert scope.gate_from_segments(segments).tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]]


def test_scoped_adapter_leaves_plain_text_exactly_as_the_base_computes_it(scoped, base):
    assert json.loads((scoped / "gem_config.json").read_text())["adapter_scope"] == "gem"
    adapted = GEMModel.from_pretrained(base, adapter=scoped)
    bare = GEMModel.from_pretrained(base, adapter=None, config=adapted.config)
    assert scope.scope_of(adapted.model) == "gem"
    # loading fuses what it can: the GEM rows are folded in, the LoRA stays apart (folded, it would reach every token)
    layers = runtime._tuner_layers(adapted)
    assert {type(layer).__name__: layer.merged for layer in layers} == {"TrainableTokensLayer": True, "Linear": False}
    for text in TEXTS:
        assert torch.equal(plain_logits(adapted, text), plain_logits(bare, text))
    prompt = adapted.tokenizer("The dog", return_tensors="pt")
    with torch.no_grad():
        kwargs = {"max_new_tokens": 6, "do_sample": False}
        assert torch.equal(adapted.generate(**prompt, **kwargs), bare.generate(**prompt, **kwargs))
    # ... while the embeddings are the trained adapter's, not the base's
    assert not np.allclose(adapted.encode(TEXTS), bare.encode(TEXTS), atol=1e-3)


def test_the_adapter_changes_gem_positions_and_leaves_the_text_before_them(scoped, base):
    adapted = GEMModel.from_pretrained(base, adapter=scoped)
    rows = adapted._tokenize_for_embedding(TEXTS[:1], "gem", 64)
    ids, segments = torch.tensor([rows[0][0]]), torch.tensor([rows[0][1]])
    with torch.no_grad():
        hidden = adapted.hidden_states(ids, segments)
        adapted.disable_adapters()  # LoRA off, the same trained GEM rows
        without = adapted.hidden_states(ids, segments)
    prefix = segments[0] == Segment.PREFIX
    assert torch.equal(hidden[0, prefix], without[0, prefix])
    assert not torch.allclose(hidden[0, ~prefix], without[0, ~prefix], atol=1e-4)


def test_in_memory_scoped_model_and_saved_adapter_agree(root, base):
    from gem_adapter.training.run import build_peft_model

    config = tiny_training_config(base, root / "corpus.txt", root / "unused", num_gem_tokens=2, adapter_scope="gem")
    gem = build_peft_model(config)
    with torch.no_grad():  # a LoRA B of zeros has no effect; give it one so the gate shows
        for name, parameter in gem.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    gem.model.eval()
    ids = torch.tensor([gem.tokenizer("a plain text")["input_ids"]])
    with torch.no_grad():
        gated = gem.model(input_ids=ids).logits
        with gem.model.disable_adapter():
            base_logits = gem.model(input_ids=ids).logits
        scope.install(gem.model, "all")  # the same weights applied everywhere
        everywhere = gem.model(input_ids=ids).logits
    assert torch.equal(gated, base_logits) and not torch.allclose(everywhere, base_logits, atol=1e-3)


def test_runtime_switching_applies_each_adapters_scope(scoped, base, root):
    from test_adapters import plain_lora

    plain = plain_lora(base, root / "plain-lora")  # no gem_config: scope all
    gem = GEMModel.from_pretrained(base, adapter=None, config=GEMConfig(num_gem_tokens=2))
    reference = plain_logits(gem, TEXTS[0])
    gem.load_adapter(scoped, "scoped")
    gem.load_adapter(plain, "plain")
    gem.use_adapter("scoped")
    assert scope.scope_of(gem.model) == "gem" and torch.equal(plain_logits(gem, TEXTS[0]), reference)
    gem.use_adapter("plain")
    assert scope.scope_of(gem.model) == "all" and not torch.allclose(plain_logits(gem, TEXTS[0]), reference, atol=1e-4)
    with pytest.raises(GEMError, match="different adapter_scope"):
        gem.use_adapter(["scoped", "plain"])


def test_merge_export_and_stack_refuse_a_scoped_adapter(scoped, base, tmp_path):
    for action, call in [("merge", lambda: merge(base, scoped, tmp_path / "m")),
                         ("export", lambda: export(base, scoped, tmp_path / "e", "sentence-transformers")),
                         ("stack", lambda: stack(base, {"a": scoped, "b": scoped}, tmp_path / "s"))]:
        with pytest.raises(GEMError, match=rf"adapter_scope 'gem'.*{action} would apply it to every token"):
            call()
    assert not any(tmp_path.iterdir())


def test_scope_settings_are_validated(tmp_path):
    with pytest.raises(GEMConfigError, match="adapter_scope must be one of"):
        GEMConfig(adapter_scope="text")
    with pytest.raises(GEMConfigError, match="activation_checkpointing"):
        tiny_training_config(tmp_path, tmp_path, tmp_path / "o", adapter_scope="gem", activation_checkpointing=True)
    with pytest.raises(ValueError, match="needs a LoRA adapter"):
        scope.install(tiny_gem().model, "gem")
