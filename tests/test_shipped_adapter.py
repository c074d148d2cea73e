"""The GEM adapter shipped in the package for the default model, and how commands choose an adapter."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
import torch

from conftest import save_tiny_base, without_tokenizer
from gem_adapter import DEFAULT_MODEL
from gem_adapter.hub import SHIPPED_DIR, shipped_adapter

SHIPPED = SHIPPED_DIR / "smollm2-135m"


def test_the_default_model_has_a_shipped_adapter_and_other_bases_none(tmp_path):
    assert shipped_adapter(DEFAULT_MODEL) == SHIPPED
    assert shipped_adapter("smollm2-135m-instruct-typo") is None
    assert shipped_adapter(save_tiny_base(tmp_path / "tiny")) is None


def test_shipped_adapter_is_small_complete_and_documented():
    sizes = {p.name: p.stat().st_size for p in SHIPPED.iterdir() if p.is_file()}
    assert sum(sizes.values()) <= 10_000_000, sizes
    for name in ("adapter_config.json", "adapter_model.safetensors", "gem_config.json", "training_config.json",
                 "train_summary.json", "README.md"):
        assert name in sizes, f"{name} missing from {SHIPPED}"
    training = json.loads((SHIPPED / "training_config.json").read_text())
    assert training["base_model"] == DEFAULT_MODEL and isinstance(training["seed"], int)
    summary = json.loads((SHIPPED / "train_summary.json").read_text())
    # the README names the train splits the recipe used; test splits never feed training
    for split in summary["train_splits_used"]:
        assert split in (SHIPPED / "README.md").read_text()


def test_shipped_adapter_matches_the_base_it_was_trained_for():
    config = json.loads((SHIPPED / "gem_config.json").read_text())
    adapter_config = json.loads((SHIPPED / "adapter_config.json").read_text())
    assert config["base_model"] == DEFAULT_MODEL
    assert adapter_config["peft_type"] == "LORA"


def test_commands_choose_the_given_adapter_none_or_the_shipped_one(tmp_path):
    from gem_adapter.cli.common import chosen_adapter

    folder = tmp_path / "adapter"
    folder.mkdir()
    assert chosen_adapter(DEFAULT_MODEL, folder, False) == folder
    assert chosen_adapter(DEFAULT_MODEL, None, False) == SHIPPED
    assert chosen_adapter(DEFAULT_MODEL, None, True) is None
    assert chosen_adapter(str(tmp_path / "tiny"), None, False) is None
    with pytest.raises(click.UsageError, match="not both"):
        chosen_adapter(DEFAULT_MODEL, folder, True)
    with pytest.raises(Exception, match="does not exist"):
        chosen_adapter(DEFAULT_MODEL, tmp_path / "missing", False)


def test_an_adapter_without_tokenizer_files_takes_the_base_tokenizer(tmp_path):
    # the shipped adapter leaves the 3.5 MB tokenizer out: the base's, plus the GEM tokens added
    # the same way training added them, must give the same model
    from gem_adapter import GEMModel
    from test_evaluation_cli import random_adapter

    base = save_tiny_base(tmp_path / "tiny")
    with_tokenizer = random_adapter(base, tmp_path / "adapter")
    bare = without_tokenizer(with_tokenizer, tmp_path / "bare")
    assert not (bare / "tokenizer_config.json").exists()
    texts = ["a short text", "another, longer text to embed"]
    full = GEMModel.from_pretrained(base, adapter=with_tokenizer).encode(texts)
    light = GEMModel.from_pretrained(base, adapter=bare).encode(texts)
    np.testing.assert_allclose(full, light, atol=1e-6)
    assert not np.allclose(light, GEMModel.from_pretrained(base, adapter=None).encode(texts), atol=1e-3)


@pytest.mark.real_model
def test_default_model_embeds_with_the_shipped_adapter_unless_asked_not_to():
    from gem_adapter import GEMModel

    texts = ["A man is playing a guitar.", "A person plays the guitar.", "The stock market fell sharply."]
    adapted, base = GEMModel.from_pretrained(DEFAULT_MODEL), GEMModel.from_pretrained(DEFAULT_MODEL, adapter=None)
    trained, bare = adapted.encode(texts), base.encode(texts)
    assert not np.allclose(trained, bare, atol=1e-3)
    paraphrase, unrelated = trained[0] @ trained[1], trained[0] @ trained[2]
    # the untrained token puts every pair between 0.89 and 0.98; the shipped adapter separates them
    assert paraphrase - unrelated > 0.3, (paraphrase, unrelated)
    # adapter_scope gem: the language model is the base's, to the last bit, over the base vocabulary
    # (the GEM tokens' output rows are tied to their trained input rows; generation suppresses them)
    ids = base.tokenizer("The capital of France is Paris, and the capital of Italy is", return_tensors="pt")["input_ids"]
    vocabulary = min(adapted.gem_token_ids)
    assert adapted.gem_token_ids == list(range(vocabulary, vocabulary + len(adapted.gem_token_ids)))
    with torch.no_grad():
        assert torch.equal(adapted.model(input_ids=ids).logits[..., :vocabulary],
                           base.model(input_ids=ids).logits[..., :vocabulary])


@pytest.mark.real_model
def test_the_shipped_adapter_leaves_the_library_with_its_embeddings(tmp_path):
    # k = 1 under the gate: `gem merge` and `gem export` of the default model (no --adapter: the shipped one)
    # give folders that stock transformers + PEFT and sentence-transformers load with gem-adapter not
    # importable, embedding plain text as encode does
    from click.testing import CliRunner

    from gem_adapter import GEMModel
    from gem_adapter.cli import main
    from test_gated_export import cosines, stock_user_vectors

    assert json.loads((SHIPPED / "gem_config.json").read_text())["num_gem_tokens"] == 1
    texts = ["A man is playing a guitar.", "The stock market fell sharply.", "Who wrote the novel Middlemarch?"]
    reference = GEMModel.from_pretrained(DEFAULT_MODEL, dtype="float32").encode(texts)
    for command in (["merge", "--out", str(tmp_path / "merged")],
                    ["export", "--format", "sentence-transformers", "--out", str(tmp_path / "st")]):
        result = CliRunner().invoke(main, [*command, "--base", DEFAULT_MODEL])
        assert result.exit_code == 0, result.output
    stock = stock_user_vectors(tmp_path / "merged", tmp_path / "st", texts)
    assert stock["gem_adapter_imported"] is False
    for route in ("transformers", "sentence_transformers"):
        assert cosines(stock[route], reference).min() >= 0.999, route  # the bar for every export route


def test_shipped_folder_is_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "shipped/*/*" in text
