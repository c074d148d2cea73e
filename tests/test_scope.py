"""adapter_scope 'gem': the adapter changes the GEM tokens' view of a text, never the text itself.

With scope ``gem`` a trained adapter's LoRA applies from the GEM tokens on: a text without
GEM tokens (generation, perplexity) gets exactly the base model's logits, while the
embeddings are the trained ones. Such an adapter's LoRA cannot be folded into the weights
(merge and export keep it apart as an activated LoRA: tests/test_gated_export.py).
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

# these tests compare numbers to float32 tolerances; the bfloat16 side is tests/test_bfloat16.py
pytestmark = pytest.mark.usefixtures("auto_is_float32")

TEXTS = ["the dog near the river", "a boat", "Sentence 3 talks about the tree."]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scope")


@pytest.fixture(scope="module")
def base(root) -> Path:
    return save_tiny_base(root / "base")


@pytest.fixture(scope="module")
def corpus(root) -> Path:
    path = root / "corpus.txt"
    path.write_text("\n\n".join(
        f"Sentence {i} talks about the {w} near the river. Another remark follows it." for i, w in
        enumerate(["dog", "cat", "boat", "tree"] * 24)))
    return path


@pytest.fixture(scope="module")
def scoped(root, base, corpus) -> Path:
    """A tiny adapter trained with adapter_scope gem (k = 2, every sample through the GEM tokens, crop views)."""
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


def test_in_memory_scoped_model_and_saved_adapter_agree(root, base, corpus):
    from gem_adapter.training.run import build_peft_model

    config = tiny_training_config(base, corpus, root / "unused", num_gem_tokens=2, adapter_scope="gem")
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


def test_stack_refuses_a_scoped_adapter_and_merge_and_export_its_k_above_one(scoped, base, tmp_path):
    """A k = 1 scoped adapter merges and exports as an activated LoRA (tests/test_gated_export.py); k = 2 cannot."""
    with pytest.raises(GEMError, match=r"adapter_scope 'gem'.*stack would apply it to every token"):
        stack(base, {"a": scoped, "b": scoped}, tmp_path / "s")
    for call in (lambda: merge(base, scoped, tmp_path / "m"),
                 lambda: export(base, scoped, tmp_path / "e", "sentence-transformers")):
        with pytest.raises(GEMError, match=r"k = 2 GEM tokens"):
            call()
    assert not any(tmp_path.iterdir())


def gated_lora(architecture: str, attn: str) -> GEMModel:
    """A tiny GEM model (k = 2) with a random LoRA on every linear layer, scope gem, in training mode."""
    from peft import LoraConfig, get_peft_model

    gem = tiny_gem(architecture, k=2, attn=attn)
    torch.manual_seed(0)
    gem.model = get_peft_model(gem.model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0,
                                                     trainable_token_indices=list(gem.gem_token_ids)))
    with torch.no_grad():
        for name, parameter in gem.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.3)
    scope.install(gem.model, "gem")
    gem.model.train()
    return gem


P, G, S, _ = Segment.PREFIX, Segment.GEM, Segment.SUFFIX, Segment.PAD
BATCHES = {
    # a training batch: GEM samples at different split points, an embedding row (no suffix), a plain row
    "right padding": [[P, P, P, P, G, G, S, S, S, _], [P, P, G, G, S, S, S, S, S, S],
                      [P, P, P, P, P, P, G, G, _, _], [P, P, P, P, P, _, _, _, _, _]],
    "left padding": [[_, _, P, P, P, P, P, G, G, S], [P, P, P, P, P, P, P, P, G, G]],
}


@pytest.mark.parametrize("layout", BATCHES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_training_pass_with_a_frozen_prefix_equals_one_gated_pass(architecture, attn, layout):
    """The prefix run once without a graph, then the gated tokens on its cache: the same states and gradients.

    In float64 (eager attention still takes its softmax in float32), so rounding stays far below
    what a wrong mask, position or cache would change.
    """
    gem = gated_lora(architecture, attn)
    gem.model.double()
    decoder, model = gem.model.get_base_model().get_decoder(), gem.model
    segments = torch.tensor(BATCHES[layout])
    ids = torch.randint(0, 250, segments.shape)
    gem_ids = torch.tensor(gem.gem_token_ids)
    ids[segments == G] = gem_ids.repeat(int((segments == G).sum()) // 2)
    weights = torch.randn(*segments.shape, 32, dtype=torch.float64) * (segments != _)[..., None]  # a loss that reads every real token

    def hidden_and_gradients(split: bool):
        gem.model.zero_grad()
        if split:
            hidden = scope.frozen_prefix_hidden_states(decoder, model, ids, segments, attn, torch.float64)
        else:
            hidden = scope.gated_hidden_states(decoder, model, ids, segments, attn, torch.float64)
        (hidden * weights).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
        return hidden.detach(), grads

    whole, whole_grads = hidden_and_gradients(split=False)
    split, split_grads = hidden_and_gradients(split=True)
    real = segments != _
    torch.testing.assert_close(split[real], whole[real], atol=1e-6, rtol=1e-5)
    assert whole_grads.keys() == split_grads.keys() and any(g.abs().sum() > 0 for g in whole_grads.values())
    for name in whole_grads:
        error = (split_grads[name] - whole_grads[name]).norm() / whole_grads[name].norm().clamp(min=1e-12)
        assert error < 1e-5, f"{name}: relative error {error:.2e}"


def test_scoped_training_takes_the_frozen_prefix_path_and_trains_what_one_gated_pass_trains(root, base, corpus, monkeypatch):
    from gem_adapter.training import trainer as trainer_module

    calls = []
    original = trainer_module.frozen_prefix_hidden_states

    def counted(*args):
        calls.append(args[3].shape)
        return original(*args)

    def adapter_weights(folder: Path) -> dict:
        from safetensors.torch import load_file

        return load_file(folder / "adapter_model.safetensors")

    config = {"max_steps": 2, "save_steps": 100, "num_gem_tokens": 2, "gem_fraction": 1.0, "contrastive_weight": 1.0,
              "adapter_scope": "gem", "lora_dropout": 0.0}
    monkeypatch.setattr(trainer_module, "frozen_prefix_hidden_states", counted)
    split = adapter_weights(train(tiny_training_config(base, corpus, root / "split", **config)))
    assert len(calls) == 3 * 2  # per step: the NTP pass and the two views
    monkeypatch.setattr(trainer_module, "frozen_prefix_hidden_states", scope.gated_hidden_states)
    whole = adapter_weights(train(tiny_training_config(base, corpus, root / "whole", **config)))
    assert whole.keys() == split.keys()
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_scope_settings_are_validated(tmp_path):
    with pytest.raises(GEMConfigError, match="adapter_scope must be one of"):
        GEMConfig(adapter_scope="text")
    with pytest.raises(GEMConfigError, match="activation_checkpointing"):
        tiny_training_config(tmp_path, tmp_path, tmp_path / "o", adapter_scope="gem", activation_checkpointing=True)
    with pytest.raises(ValueError, match="needs a LoRA adapter"):
        scope.install(tiny_gem().model, "gem")
