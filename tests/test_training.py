"""GEM training on tiny models: what trains, what is saved, and how runs resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from transformers import TrainerCallback

from gem_adapter import GEMConfigError, GEMError, GEMModel
from gem_adapter.cli import main
from gem_adapter.training.recipes import load_recipe
from gem_adapter.training.run import build_peft_model, train

from conftest import QUANTIZABLE, make_tokenizer, tiny_model, tiny_training_config

# these tests compare numbers to float32 tolerances; the bfloat16 side is tests/test_bfloat16.py
pytestmark = pytest.mark.usefixtures("auto_is_float32")


def tiny_folder(tmp_path, tie=False, **sizes):
    folder = tmp_path / ("tiny-tied" if tie else "tiny")
    tiny_model("llama", tie=tie, **sizes).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def tiny_config(base, data, output, **overrides):
    return tiny_training_config(base, data, output, **overrides)


def adapter_tensors(folder):
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def test_training_changes_every_trainable_parameter_and_no_frozen_one(tmp_path, corpus):
    config = tiny_config(tiny_folder(tmp_path), corpus, tmp_path / "out", max_steps=2, contrastive_weight=1.0)
    gem = build_peft_model(config)
    before = {name: p.detach().clone() for name, p in gem.model.named_parameters()}
    trainable = {name for name, p in gem.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)

    from gem_adapter.training.run import load_chunks, make_collator
    from gem_adapter.training.trainer import GEMTrainer
    from datasets import Dataset

    train_chunks, _unused = load_chunks(config, gem.tokenizer)
    trainer = GEMTrainer(
        model=gem.model, args=config, data_collator=make_collator(config, gem), processing_class=gem.tokenizer,
        train_dataset=Dataset.from_dict({"input_ids": train_chunks, "index": list(range(len(train_chunks)))}),
        gem_token_ids=gem.gem_token_ids,
    )
    # Two steps: LoRA's B starts at zero, so A gets no gradient until B has moved once.
    trainer.train()
    after = dict(gem.model.named_parameters())
    changed = {name for name in before if not torch.equal(before[name], after[name].detach())}
    assert changed == trainable


def test_adapter_folder_round_trip_gives_identical_embeddings(tmp_path, corpus):
    base = tiny_folder(tmp_path)
    out = train(tiny_config(base, corpus, tmp_path / "out", eval_strategy="steps", eval_steps=2))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "gem_config.json", "tokenizer.json",
            "loss_log.jsonl", "loss_curve.png", "train_summary.json", "training_config.json"} <= names
    tensors = adapter_tensors(out)
    # LoRA plus one GEM row: no copy of the (resized) embedding matrix.
    rows = [t for k, t in tensors.items() if "trainable_tokens" in k]
    assert len(rows) == 1 and rows[0].shape == (1, 32)
    assert not any("embed_tokens.weight" in k or "lm_head" in k for k in tensors)
    gem_config = json.loads((out / "gem_config.json").read_text())
    assert gem_config["num_gem_tokens"] == 1 and gem_config["base_fingerprint"]

    texts = ["the dog near the river", "a boat", ""]
    loaded = GEMModel.from_pretrained(base, adapter=out)
    again = GEMModel.from_pretrained(base, adapter=out)
    np.testing.assert_array_equal(loaded.encode(texts), again.encode(texts))
    untrained = GEMModel.from_pretrained(base)
    assert not np.allclose(loaded.encode(texts), untrained.encode(texts), atol=1e-3)

    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert any("loss_gem_ntp" in r or "loss_plain_ntp" in r for r in log)
    assert any("eval_loss" in r for r in log)


def test_in_memory_model_and_saved_adapter_agree(tmp_path, corpus):
    config = tiny_config(tiny_folder(tmp_path), corpus, tmp_path / "out")
    captured = {}

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            captured["model"] = model

    out = train(config, callbacks=[Capture()])
    loaded = GEMModel.from_pretrained(config.base_model, adapter=out)
    in_memory = GEMModel(captured["model"], loaded.tokenizer, loaded.config, initialize_rows=False)
    texts = ["the cat near the house", "stone"]
    np.testing.assert_allclose(in_memory.encode(texts), loaded.encode(texts), atol=1e-6)


def test_same_seed_same_adapter(tmp_path, corpus):
    base = tiny_folder(tmp_path)
    first = adapter_tensors(train(tiny_config(base, corpus, tmp_path / "a")))
    second = adapter_tensors(train(tiny_config(base, corpus, tmp_path / "b")))
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=0, rtol=0)


class KillAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


def test_killed_and_resumed_run_ends_with_the_same_adapter(tmp_path, corpus):
    base = tiny_folder(tmp_path)
    overrides = dict(max_steps=6, save_steps=3, contrastive_weight=0.5, lora_dropout=0.1)
    straight = adapter_tensors(train(tiny_config(base, corpus, tmp_path / "straight", **overrides)))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(base, corpus, interrupted, **overrides), callbacks=[KillAt(4)])
    assert not (interrupted / "gem_config.json").exists()  # no adapter from a killed run
    assert (interrupted / "checkpoint-3").is_dir() and not (interrupted / "checkpoint-6").exists()
    resumed = adapter_tensors(train(tiny_config(base, corpus, interrupted, **overrides), resume=True))

    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-6, rtol=0)
    steps = [json.loads(l)["step"] for l in (interrupted / "loss_log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # records of the killed steps 4+ were dropped before resuming


def test_tied_embeddings_keep_output_rows_consistent(tmp_path, corpus):
    base = tiny_folder(tmp_path, tie=True)
    out = train(tiny_config(base, corpus, tmp_path / "out"))
    gem = GEMModel.from_pretrained(base, adapter=out)
    lm = gem._causal_lm
    gem_id = gem.gem_token_ids[0]
    row_in = lm.get_input_embeddings()(torch.tensor([gem_id]))[0]
    hidden = torch.randn(1, 32)
    logit = lm.get_output_embeddings()(hidden)[0, gem_id]
    torch.testing.assert_close(logit, hidden[0] @ row_in, atol=1e-5, rtol=1e-5)
    trained_row = adapter_tensors(out)
    delta = next(t for k, t in trained_row.items() if "trainable_tokens" in k)[0]
    torch.testing.assert_close(row_in, delta)


def test_4bit_qlora_on_cpu(tmp_path, corpus):
    pytest.importorskip("bitsandbytes")
    base = tiny_folder(tmp_path, **QUANTIZABLE)  # matrices that fit the AVX512-BF16 CPU kernel's blocks
    out = train(tiny_config(base, corpus, tmp_path / "q", load_in_4bit=True, max_steps=2))
    tensors = adapter_tensors(out)
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in tensors.items())
    quantized = GEMModel.from_pretrained(base, adapter=out, load_in_4bit=True)
    assert np.isfinite(quantized.encode(["a dog", "a boat"])).all()
    from gem_adapter.runtime import is_fused

    assert not quantized.fuse_adapters() and not is_fused(quantized)  # NF4 weights are never rewritten


def test_corpus_errors_come_before_any_model_load(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the corpus was checked")

    monkeypatch.setattr(GEMModel, "from_pretrained", no_model)
    base = tiny_folder(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    with pytest.raises(GEMError, match="gives 0 chunks"):
        train(tiny_config(base, short, tmp_path / "o1"))
    with pytest.raises(GEMError, match="does not exist"):
        train(tiny_config(base, tmp_path / "missing.txt", tmp_path / "o2"))


def test_used_output_folder_needs_resume_or_overwrite(tmp_path, corpus):
    base = tiny_folder(tmp_path)
    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("x")
    with pytest.raises(GEMError, match="pass --resume to continue it or --overwrite"):
        train(tiny_config(base, corpus, used))
    with pytest.raises(GEMError, match="no complete checkpoint"):
        train(tiny_config(base, corpus, used), resume=True)
    assert (used / "something").exists()


def test_unknown_recipe_key_names_valid_ones():
    with pytest.raises(GEMConfigError, match=r"unknown recipe key 'lora_rank'; did you mean .*'lora_r'"):
        load_recipe(None, {"lora_rank": 8})
    with pytest.raises(GEMConfigError, match="expects float"):
        load_recipe(None, {"learning_rate": "fast"})


def test_shipped_recipes_load():
    from gem_adapter.training.recipes import RECIPE_DIR

    recipes = sorted(RECIPE_DIR.glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        config = load_recipe(recipe)
        assert config.num_gem_tokens >= 1 and config.output_dir


def test_cli_train_writes_adapter_log_and_curve(tmp_path, corpus):
    base = tiny_folder(tmp_path)
    out = tmp_path / "cli-out"
    args = ["train", "--base", str(base), "--data", str(corpus), "--out", str(out),
            "--set", "max_steps=2", "--set", "per_device_train_batch_size=4", "--set", "eval_chunks=4",
            "--set", "eval_strategy=no", "--set", "disable_tqdm=true", "--set", "min_chunk_tokens=16",
            # the default recipe's pairs and Matryoshka sizes are for SmolLM2, not a 32-wide tiny model
            "--set", "pairs_data=null", "--set", "matryoshka_dims=null"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"adapter written to {out}" in result.output
    assert (out / "loss_curve.png").stat().st_size > 1000
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "is not empty; pass --force to replace it, --resume to continue it" in again.output
    bad = CliRunner().invoke(main, args + ["--set", "gem_fraktion=0.3", "--force"])
    assert bad.exit_code == 1 and "unknown recipe key 'gem_fraktion'" in bad.output
