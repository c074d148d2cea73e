"""``gem export``: engines fed plain text give GEMModel.encode's embeddings; k > 1 is refused.

The sentence-transformers export is loaded with ``SentenceTransformer(folder)`` and nothing
else; the vLLM layout is checked through the tokenizers vLLM would load (vLLM itself runs in
tools/engine_check.py, in its own virtualenv).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tokenizer, save_tiny_base, tiny_training_config

from gem_adapter import GEMError, GEMModel
from gem_adapter.adapters import export
from gem_adapter.adapters.export import EMBEDDING_TOKENIZER, GENERATION_TOKENIZER, embedding_tokenizer
from gem_adapter.cli import main
from gem_adapter.training import train

# these tests compare numbers to float32 tolerances; the bfloat16 side is tests/test_bfloat16.py
pytestmark = pytest.mark.usefixtures("auto_is_float32")

PROMPTEOL = 'This sentence : "{text}" means in one word:"'
TEXTS = ["the dog near the river", "a boat", "", "Sentence 3 talks about the tree. " * 30, "ünïcode ✓ text"]
PROMPTS = ["The dog", "Another remark", "x"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def base(root) -> Path:
    return save_tiny_base(root / "base")


@pytest.fixture(scope="module")
def adapters(root, base):
    """Tiny adapters trained for a few steps: k = 1 with PromptEOL, k = 1 bare, k = 2."""
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(
        f"Sentence {i} talks about the {w} near the river. Another remark follows it." for i, w in
        enumerate(["dog", "cat", "boat", "tree"] * 24)))
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            settings = {"k1": dict(num_gem_tokens=1, embed_template=PROMPTEOL, contrastive_weight=0.5),
                        "k1-bare": dict(num_gem_tokens=1), "k2": dict(num_gem_tokens=2)}[name]
            made[name] = train(tiny_training_config(base, corpus, root / name, save_steps=100, max_steps=2, **settings))
        return made[name]

    return get


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_sentence_transformers_export_embeds_plain_text_like_encode(tmp_path, base, adapters):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    adapter = adapters("k1")
    report = export(base, adapter, tmp_path / "st", "sentence-transformers")
    reference = GEMModel.from_pretrained(base, adapter=adapter).encode(TEXTS)

    served = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    vectors = served.encode(TEXTS, batch_size=2)
    assert cosines(vectors, reference).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)
    assert report.embedding_tokenizer == "." and report.generation_tokenizer == GENERATION_TOKENIZER
    assert (tmp_path / "st" / "README.md").read_text().count("SentenceTransformer") >= 1
    assert json.loads((tmp_path / "st" / "export_report.json").read_text())["format"] == "sentence-transformers"


def test_the_exported_weights_generate_as_the_adapter_model_does(tmp_path, base, adapters):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = adapters("k1")
    export(base, adapter, tmp_path / "st", "sentence-transformers")
    expected = GEMModel.from_pretrained(base, adapter=adapter).generate(PROMPTS, max_new_tokens=8, do_sample=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "st").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "st" / GENERATION_TOKENIZER)
    gem_id = tokenizer.convert_tokens_to_ids("<|gem_0|>")
    for prompt, text in zip(PROMPTS, expected):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert gem_id not in ids[0].tolist()  # the generation tokenizer adds nothing
        with torch.inference_mode():
            output = model.generate(ids, max_new_tokens=8, do_sample=False, suppress_tokens=[gem_id],
                                    pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True) == text


def test_vllm_layout_keeps_the_generation_tokenizer_at_the_root(tmp_path, base, adapters):
    from transformers import AutoModel, AutoTokenizer

    adapter = adapters("k1")
    report = export(base, adapter, tmp_path / "v", "vllm")
    assert report.embedding_tokenizer == EMBEDDING_TOKENIZER
    assert "--runner pooling" in report.commands["embeddings server"]
    assert f"--tokenizer {tmp_path / 'v'}/{EMBEDDING_TOKENIZER}" in report.commands["embeddings server"]
    root_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "v")
    assert root_tokenizer("a boat")["input_ids"] == make_tokenizer()("a boat")["input_ids"]

    # what vLLM's pooling runner does: the embedding tokenizer, the decoder, the last token, normalised
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "v" / EMBEDDING_TOKENIZER)
    decoder = AutoModel.from_pretrained(tmp_path / "v").eval()
    with torch.inference_mode():
        last = np.stack([decoder(**tokenizer(t, return_tensors="pt", truncation=True)).last_hidden_state[0, -1].numpy()
                         for t in TEXTS])
    reference = GEMModel.from_pretrained(base, adapter=adapter).encode(TEXTS)
    assert cosines(last, reference).min() >= 0.99999
    # no sentence-transformers files: vLLM would cap the generate runner's context at their max_seq_length
    assert not (tmp_path / "v" / "modules.json").exists()
    assert '"pooling_type": "LAST"' in report.commands["embeddings server"]
    assert "--max-model-len 512" in report.commands["embeddings server"]


def test_embedding_tokenizer_wraps_like_encode_and_truncates_only_the_text(base, adapters):
    from transformers import AutoTokenizer

    from gem_adapter import GEMConfig

    gem = GEMModel.from_pretrained(base, adapter=adapters("k1"))
    wrapped = embedding_tokenizer(gem.tokenizer, GEMConfig(template=PROMPTEOL, max_length=40))
    for text in TEXTS:
        expected = gem._tokenize_for_embedding([text], "gem", 40, PROMPTEOL)[0][0]
        assert wrapped(text, truncation=True, max_length=40)["input_ids"] == expected
    assert AutoTokenizer.from_pretrained(base)("a")["input_ids"] == gem.tokenizer("a")["input_ids"]  # original untouched


@pytest.mark.parametrize("export_format", ["sentence-transformers", "vllm", "gguf"])
def test_k_above_one_is_refused_before_any_weight_loads(tmp_path, base, adapters, export_format, monkeypatch):
    export_module = importlib.import_module("gem_adapter.adapters.export")  # the package's `export` is the function
    adapter = adapters("k2")
    monkeypatch.setattr(export_module, "write_merged", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(GEMError, match=r"k = 2 GEM tokens.*num_gem_tokens=1"):
        export(base, adapter, tmp_path / "x", export_format)
    assert not (tmp_path / "x").exists()


def test_gguf_refuses_a_template_it_cannot_express(tmp_path, base, adapters):
    with pytest.raises(GEMError, match="llama.cpp's tokenizer cannot add text around the input"):
        export(base, adapters("k1"), tmp_path / "g", "gguf")
    assert not (tmp_path / "g").exists()


def test_cli_export_and_its_one_line_refusals(tmp_path, base, adapters):
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--base", str(base), "--adapter", str(adapters("k1")), "--format",
                                  "sentence-transformers", "--out", str(tmp_path / "st")])
    assert result.exit_code == 0, result.output
    assert "SentenceTransformer(" in result.output
    again = runner.invoke(main, ["export", "--base", str(base), "--adapter", str(adapters("k1")), "--format",
                                 "sentence-transformers", "--out", str(tmp_path / "st")])
    assert again.exit_code != 0 and "Traceback" not in again.output
    refused = runner.invoke(main, ["export", "--base", str(base), "--adapter", str(adapters("k2")), "--format", "vllm",
                                   "--out", str(tmp_path / "k2")])
    assert refused.exit_code == 1
    assert len(refused.output.strip().splitlines()) == 1 and "k = 2" in refused.output
    assert not (tmp_path / "k2").exists()
