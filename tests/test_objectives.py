"""Objectives that keep teaching: Matryoshka dimensions, the paper's two-phase schedule, GradCache.

* ``matryoshka_dims``: every InfoNCE term is the mean of the loss at the full size and at
  each prefix size (cut, re-normalised); ``encode(dimensions=)``, ``gem embed --dimensions``
  and the server's ``dimensions`` serve those prefixes (the server in tests/test_serving.py).
* ``contrastive_start_step``: mixed NTP alone before it, the contrastive terms from it on.
* ``contrastive_cache_chunk``: GradCache; the gradients equal those of one pass.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import gradients_of, save_tiny_base, tiny_gem, tiny_training_config, trainer_and_batch

from gem_adapter import GEMConfig, GEMConfigError, GEMModel
from gem_adapter.cli import main
from gem_adapter.training.losses import grad_cached, info_nce
from gem_adapter.training.recipes import load_recipe

# these tests compare numbers to float32 tolerances; the bfloat16 side is tests/test_bfloat16.py
pytestmark = pytest.mark.usefixtures("auto_is_float32")

TEXTS = ["the dog near the river", "a boat", "Sentence 3 talks about the tree.", "x"]


def plain_info_nce(a, b, temperature):
    """The textbook symmetric InfoNCE over cosine similarities, written out."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# ---------------------------------------------------------------------------- the Matryoshka loss
def test_without_dims_the_loss_is_plain_infonce_and_with_dims_the_mean_over_prefix_sizes():
    torch.manual_seed(0)
    a, b = torch.randn(8, 32), torch.randn(8, 32)
    torch.testing.assert_close(info_nce(a, b, 0.05), plain_info_nce(a, b, 0.05))

    expected = (plain_info_nce(a[:, :4], b[:, :4], 0.05) + plain_info_nce(a[:, :16], b[:, :16], 0.05)
                + plain_info_nce(a, b, 0.05)) / 3
    torch.testing.assert_close(info_nce(a, b, 0.05, dims=[4, 16]), expected)
    assert not torch.allclose(info_nce(a, b, 0.05, dims=[4, 16]), info_nce(a, b, 0.05))


def test_prefix_sizes_are_taught_only_with_dims():
    """Pairs that agree everywhere but in the first 4 values: only the Matryoshka loss minds."""
    torch.manual_seed(0)
    shared = torch.randn(8, 32)
    a, b = shared.clone(), shared.clone()
    a[:, :4], b[:, :4] = torch.randn(8, 4), torch.randn(8, 4)  # the 4-value prefixes are unrelated
    plain, nested = info_nce(a, b, 0.05), info_nce(a, b, 0.05, dims=[4])
    assert nested > plain + 1.0

    # and its gradient reaches the prefix: training the free vectors with dims fixes the prefix
    a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([a, b], lr=0.05)
    for _ in range(100):
        optimiser.zero_grad()
        info_nce(a, b, 0.05, dims=[4]).backward()
        optimiser.step()
    assert info_nce(a[:, :4].detach(), b[:, :4].detach(), 0.05) < 0.1


def test_pairs_form_one_directional_with_masked_columns_and_hard_negatives():
    torch.manual_seed(0)
    a, b, negatives = torch.randn(4, 16), torch.randn(4, 16), torch.randn(2, 16)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 1] = True
    logits = F.normalize(a, dim=-1) @ F.normalize(torch.cat([b, negatives]), dim=-1).T / 0.1
    logits[0, 1] = float("-inf")
    expected = F.cross_entropy(logits, torch.arange(4))
    torch.testing.assert_close(info_nce(a, b, 0.1, extra_negatives=negatives, mask=mask, symmetric=False), expected)


@pytest.mark.parametrize("dims, message", [
    ([16, 8], "strictly increasing"),
    ([0, 8], "positive integers"),
    ([], "non-empty"),
    ("64", "a list of integers"),
])
def test_bad_matryoshka_dims_are_refused_in_the_recipe(dims, message):
    with pytest.raises(GEMConfigError, match=message):
        load_recipe(None, {"matryoshka_dims": dims, "contrastive_weight": 1.0})
    with pytest.raises(GEMConfigError, match=message):
        GEMConfig(matryoshka_dims=dims)


def test_dims_not_below_the_hidden_size_are_refused_before_the_model_loads(tmp_path, corpus, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before matryoshka_dims were checked")

    monkeypatch.setattr(GEMModel, "from_pretrained", no_model)
    from gem_adapter.training.run import train

    config = tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out",
                                  contrastive_weight=1.0, matryoshka_dims=[8, 32])
    with pytest.raises(GEMConfigError, match=r"^matryoshka_dims must lie below the model's hidden size 32 .*got 32$"):
        train(config)


def test_old_gem_configs_without_matryoshka_dims_still_load(tmp_path):
    old = GEMConfig().to_dict()
    del old["matryoshka_dims"]
    (tmp_path / "gem_config.json").write_text(json.dumps(old))
    assert GEMConfig.load(tmp_path).matryoshka_dims is None
    GEMConfig(matryoshka_dims=[8, 16]).save(tmp_path)
    assert GEMConfig.load(tmp_path).matryoshka_dims == [8, 16]


# ---------------------------------------------------------------------------- serving prefixes
def test_encode_dimensions_is_the_renormalised_prefix_of_the_full_embedding():
    gem = tiny_gem()
    full = gem.encode(TEXTS)
    raw = gem.encode(TEXTS, normalize=False)
    for dimensions in (1, 8, 31, 32):
        cut = gem.encode(TEXTS, dimensions=dimensions)
        assert cut.shape == (len(TEXTS), dimensions)
        np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-6)
        prefix = full[:, :dimensions]
        np.testing.assert_allclose(cut, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=1e-6)
        np.testing.assert_allclose(gem.encode(TEXTS, dimensions=dimensions, normalize=False), raw[:, :dimensions], atol=1e-6)
    np.testing.assert_allclose(gem.encode(TEXTS, dimensions=32), full, atol=1e-6)
    assert not np.allclose(gem.encode(TEXTS, dimensions=8), full[:, :8], atol=1e-3)
    assert gem.encode("a boat", dimensions=8).shape == (8,)
    assert gem.encode([], dimensions=8).shape == (0, 8)


@pytest.mark.parametrize("dimensions, error, message", [
    (33, ValueError, r"^dimensions must lie in 1\.\.32 \(the embedding size\), got 33$"),
    (0, ValueError, r"got 0$"),
    (True, TypeError, "must be an int"),
    (8.0, TypeError, "must be an int"),
])
def test_encode_refuses_dimensions_outside_the_embedding(dimensions, error, message):
    with pytest.raises(error, match=message):
        tiny_gem().encode(TEXTS, dimensions=dimensions)


def test_cli_embed_dimensions(tiny_model_folder, tmp_path):
    out = tmp_path / "e.npy"
    args = ["embed", "--base", str(tiny_model_folder), "--text", TEXTS[0], "--text", TEXTS[1], "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--dimensions", "8"])
    assert result.exit_code == 0, result.output
    assert f"wrote 2 x 8 embeddings to {out}" in result.output
    expected = GEMModel.from_pretrained(tiny_model_folder).encode(TEXTS[:2], dimensions=8)
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)

    too_big = CliRunner().invoke(main, [*args, "--dimensions", "33", "--force"])
    assert too_big.exit_code == 1
    assert too_big.output.strip().splitlines()[-1] == "Error: --dimensions 33 exceeds this model's embedding size 32"
    assert CliRunner().invoke(main, [*args, "--dimensions", "0", "--force"]).exit_code == 2  # click's range check


# ---------------------------------------------------------------------------- the two-phase schedule
def log_records(out):
    return [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("start", [2, 0.5])
def test_no_contrastive_loss_before_the_start_step_and_one_from_it_on(tmp_path, corpus, start):
    from gem_adapter.training.run import train

    config = tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out", max_steps=4,
                                  contrastive_weight=1.0, contrastive_start_step=start, matryoshka_dims=[8, 16])
    out = train(config)
    records = [r for r in log_records(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:  # the first two optimizer steps are NTP only
        assert ("loss_contrastive" in record) == (record["step"] > 2), record
        assert "loss_gem_ntp" in record or "loss_plain_ntp" in record
    assert all(np.isfinite(r["loss_contrastive"]) for r in records[2:])
    # the adapter says which prefix sizes it was trained for
    assert json.loads((out / "gem_config.json").read_text())["matryoshka_dims"] == [8, 16]
    assert GEMModel.from_pretrained(config.base_model, adapter=out).config.matryoshka_dims == [8, 16]


@pytest.mark.parametrize("start, message", [
    (4, r"below max_steps \(4\)"),
    (1.5, "a step"),
    (-1, "a step"),
])
def test_a_start_step_that_leaves_no_contrastive_phase_is_refused(tmp_path, start, message):
    with pytest.raises(GEMConfigError, match=f"contrastive_start_step must be .*{message}"):
        load_recipe(None, {"contrastive_start_step": start, "max_steps": 4, "contrastive_weight": 1.0})


def test_the_paper_recipe_is_the_self_supervised_recipe_with_the_papers_schedule():
    default, paper = load_recipe("smollm2-135m-selfsup"), load_recipe("smollm2-135m-paper")
    assert (paper.gem_fraction, paper.contrastive_view_mode, paper.contrastive_start_step) == (0.2, "dropout", 0.5)
    assert paper.lora_dropout > 0  # dropout is what tells the two identical views apart
    for key in ("base_model", "data", "chunk_unit", "max_chunk_tokens", "max_train_chunks", "eval_chunks",
                "num_gem_tokens", "per_device_train_batch_size", "max_steps", "learning_rate", "lora_r", "seed"):
        assert getattr(paper, key) == getattr(default, key), key
    assert paper.output_dir != default.output_dir


# ---------------------------------------------------------------------------- GradCache
def test_grad_cached_replays_each_chunks_dropout_masks():
    """A toy encoder with dropout: GradCache's gradients equal those of the same chunks run once with a graph."""
    torch.manual_seed(0)
    weight = torch.randn(6, 16, requires_grad=True)
    inputs = {"a": torch.randn(10, 6), "b": torch.randn(10, 6)}

    def encode(side, start, end):
        return F.dropout(inputs[side][start:end] @ weight, p=0.5, training=True)

    def loss_fn(a, b):
        return info_nce(a, b, 0.1, dims=[4])

    torch.manual_seed(1)  # the reference: the same chunks in the same order, one graph
    direct = loss_fn(*[torch.cat([encode(s, i, min(i + 3, 10)) for i in range(0, 10, 3)]) for s in ("a", "b")])
    (expected,) = torch.autograd.grad(direct, [weight])

    torch.manual_seed(1)
    value = grad_cached(encode, [("a", 10), ("b", 10)], 3, loss_fn, lambda x: x.backward())
    torch.testing.assert_close(value, direct.detach())
    torch.testing.assert_close(weight.grad, expected, atol=1e-6, rtol=1e-5)


def cache_setup(tmp_path, corpus, with_pairs=False, **overrides):
    config = tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out", contrastive_weight=0.7,
                                  lora_dropout=0.0, matryoshka_dims=[8], per_device_train_batch_size=8, **overrides)
    trainer, batch, _gem = trainer_and_batch(config, with_pairs)
    return trainer, batch


@pytest.mark.parametrize("accumulation, by_token_count", [(1, False), (2, False), (2, True)])
def test_gradcache_gradients_equal_the_one_pass_gradients(tmp_path, corpus, accumulation, by_token_count):
    trainer, batch = cache_setup(tmp_path, corpus, gradient_accumulation_steps=accumulation)
    assert "view_a_input_ids" in batch and batch["view_a_input_ids"].shape[0] == 8
    items = int((batch["labels"][:, 1:] != -100).sum()) * accumulation if by_token_count else None
    loss, plain = gradients_of(trainer, batch, None, items)
    assert len(plain) >= 4 and any("lora_A" in n for n in plain) and any("trainable_tokens" in n for n in plain)
    for chunk in (3, 8):
        cached_loss, cached = gradients_of(trainer, batch, chunk, items)
        torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=1e-5)
        assert cached.keys() == plain.keys()
        for name in plain:
            torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
    metrics = trainer._metrics["train"]
    assert len(metrics["loss_contrastive"]) == 3 and np.allclose(metrics["loss_contrastive"], metrics["loss_contrastive"][0])


def test_gradcache_also_covers_the_pairs_term(tmp_path, corpus):
    trainer, batch = cache_setup(tmp_path, corpus, with_pairs=True)
    assert "pair_anchor_input_ids" in batch and "pair_negative_input_ids" in batch
    loss, plain = gradients_of(trainer, batch, None)
    cached_loss, cached = gradients_of(trainer, batch, 4)
    torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=1e-5)
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
    assert len(trainer._metrics["train"]["loss_pairs"]) == 2


def test_gradcache_trains_end_to_end_and_its_setting_is_checked(tmp_path, corpus):
    from gem_adapter.training.run import train

    with pytest.raises(GEMConfigError, match="contrastive_cache_chunk must be None or an integer >= 1"):
        load_recipe(None, {"contrastive_cache_chunk": 0})
    out = train(tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out", max_steps=2,
                                     contrastive_weight=1.0, contrastive_cache_chunk=3, lora_dropout=0.1))
    records = [r for r in log_records(out) if "loss" in r]
    assert len(records) == 2 and all(np.isfinite(r["loss_contrastive"]) for r in records)
