"""Gated adapters (``adapter_scope: gem``, k = 1) outside gem-adapter: stock transformers + PEFT and sentence-transformers.

``gem merge`` of a gated adapter writes the base with its trained GEM rows plus the LoRA as a
PEFT activated LoRA (``alora/``) invoked by the GEM token. The specification:

* plain text through the folder's embedding tokenizer gives ``GEMModel.encode``'s embedding,
  in a process where gem-adapter cannot even be imported;
* text without the GEM token generates exactly as the base does;
* k > 1, and a GGUF of a gated adapter, are refused in one line before any weight loads.

The vLLM plugin itself runs in tools/engine_check.py (vLLM lives in a virtualenv of its own);
here its registration and the folder it serves are checked.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import random_gem_adapter, save_tiny_base, without_tokenizer

from gem_adapter import GEMError, GEMModel
from gem_adapter.adapters import export, merge
from gem_adapter.adapters.engine_tokenizer import EMBEDDING_TOKENIZER, GENERATION_TOKENIZER
from gem_adapter.cli import main

# these tests compare numbers to float32 tolerances
pytestmark = pytest.mark.usefixtures("auto_is_float32")

PROMPTEOL = 'This sentence : "{text}" means in one word:"'
TEXTS = ["the dog near the river", "a boat", "", "Sentence 3 talks about the tree. " * 12, "ünïcode ✓ text"]
PROMPTS = ["The dog", "Another remark", "x"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gated")


@pytest.fixture(scope="module")
def base(root) -> Path:
    return save_tiny_base(root / "base")


def strong_gated_adapter(base: Path, out: Path, num_gem_tokens: int = 1) -> Path:
    """A gated adapter saved as training saves one: random GEM rows and a random LoRA on every linear layer.

    Large enough (LoRA B ~ N(0, 0.5)) that the LoRA moves the embedding far (cosine ~0.4 to the
    same model without it), so a gate in the wrong place fails every check below.
    """
    return random_gem_adapter(base, out, seed=3, template=PROMPTEOL, num_gem_tokens=num_gem_tokens, adapter_scope="gem",
                              target_modules="all-linear", lora_b_std=0.5)


@pytest.fixture(scope="module")
def gated(root, base) -> Path:
    return strong_gated_adapter(base, root / "gated")


@pytest.fixture(scope="module")
def reference(base, gated) -> np.ndarray:
    return GEMModel.from_pretrained(base, adapter=gated, dtype="float32").encode(TEXTS)


@pytest.fixture(scope="module")
def merged(root, base, gated) -> Path:
    merge(base, gated, root / "merged")
    return root / "merged"


@pytest.fixture(scope="module")
def sentence_transformers_export(root, base, gated) -> Path:
    pytest.importorskip("sentence_transformers")
    export(base, gated, root / "st", "sentence-transformers")
    return root / "st"


# A user's process: gem-adapter cannot be imported, only transformers, PEFT and sentence-transformers.
STOCK_USER = textwrap.dedent('''
    import json, sys
    sys.modules["gem_adapter"] = None  # any import of gem-adapter now raises ImportError
    import torch
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged, st, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tokenizer = AutoTokenizer.from_pretrained(merged + "/embedding-tokenizer")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), merged + "/alora")
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # right padding: read each row's last real token
    with torch.inference_mode():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
    last = hidden[torch.arange(len(texts)), batch["attention_mask"].sum(1) - 1]
    vectors = torch.nn.functional.normalize(last, dim=-1)
    served = SentenceTransformer(st, device="cpu", trust_remote_code=True, model_kwargs={"dtype": torch.float32})
    print(json.dumps({"transformers": vectors.tolist(), "sentence_transformers": served.encode(texts).tolist(),
                      "gem_adapter_imported": "gem_adapter" in sys.modules and sys.modules["gem_adapter"] is not None}))
''')


@pytest.fixture(scope="module")
def stock_vectors(merged, sentence_transformers_export) -> dict:
    return stock_user_vectors(merged, sentence_transformers_export, TEXTS)


def stock_user_vectors(merged: Path, sentence_transformers_export: Path, texts: list[str]) -> dict:
    """``STOCK_USER``'s embeddings of ``texts`` (the process's last line, as JSON), run in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", STOCK_USER, str(merged), str(sentence_transformers_export),
                             json.dumps(texts)], capture_output=True, text=True, env={**_environment(), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _environment() -> dict:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("PYTEST")}


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def no_gate_vectors(model, tokenizer, texts) -> np.ndarray:
    """Last-token states of ``model`` (a plain transformers model or PEFT model) over the embedding tokenizer."""
    rows = []
    with torch.inference_mode():
        for text in texts:
            rows.append(model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0, -1])
    return torch.nn.functional.normalize(torch.stack(rows), dim=-1).numpy()


def test_stock_transformers_and_peft_embed_plain_text_like_encode(stock_vectors, reference):
    assert stock_vectors["gem_adapter_imported"] is False
    assert cosines(stock_vectors["transformers"], reference).min() >= 0.99999


def test_the_sentence_transformers_export_embeds_plain_text_like_encode(stock_vectors, reference):
    vectors = np.asarray(stock_vectors["sentence_transformers"])
    assert cosines(vectors, reference).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)


def test_without_its_invocation_the_lora_gives_other_embeddings(merged, reference):
    """What the activated LoRA's invocation holds up: the same LoRA off, or on every token, is another model."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged / EMBEDDING_TOKENIZER)
    off = no_gate_vectors(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), tokenizer, TEXTS)
    config = LoraConfig.from_pretrained(str(merged / "alora"))
    config.alora_invocation_tokens = None
    everywhere = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32),
                                           str(merged / "alora"), config=config)
    assert cosines(off, reference).max() < 0.9
    assert cosines(no_gate_vectors(everywhere, tokenizer, TEXTS), reference).max() < 0.9


def test_sentence_transformers_own_peft_loading_would_leave_the_lora_off(tmp_path, sentence_transformers_export, merged):
    """Why the export carries GatedTransformer: sentence-transformers loads an adapter through transformers'
    PEFT integration, which never works out where an activated LoRA starts, so the LoRA stays off."""
    import shutil

    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stock = tmp_path / "stock"
    shutil.copytree(sentence_transformers_export, stock)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(stock / "alora" / name, stock / name)
    settings = json.loads((stock / "adapter_config.json").read_text())
    (stock / "adapter_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": str(merged)}))
    modules = json.loads((stock / "modules.json").read_text())
    modules[0]["type"] = "sentence_transformers.base.modules.transformer.Transformer"
    (stock / "modules.json").write_text(json.dumps(modules))
    vectors = SentenceTransformer(str(stock), device="cpu", model_kwargs={"dtype": torch.float32}).encode(TEXTS)
    tokenizer = AutoTokenizer.from_pretrained(merged / EMBEDDING_TOKENIZER)
    off = no_gate_vectors(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), tokenizer, TEXTS)
    assert cosines(vectors, off).min() >= 0.99999


def test_the_sentence_transformers_export_needs_trust_remote_code(sentence_transformers_export):
    from sentence_transformers import SentenceTransformer

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(sentence_transformers_export), device="cpu")


def test_plain_text_runs_exactly_the_base(merged, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bare = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), str(merged / "alora"))
    tokenizer = AutoTokenizer.from_pretrained(merged)
    gem_id = tokenizer.convert_tokens_to_ids("<|gem_0|>")
    vocabulary = bare.config.vocab_size
    for prompt in PROMPTS + TEXTS[:2]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert gem_id not in ids[0].tolist()  # the generation tokenizer adds nothing
        with torch.inference_mode():
            assert torch.equal(model(input_ids=ids).logits[..., :vocabulary], bare(input_ids=ids).logits)
            # greedy, 12 tokens, no arguments: the folder's generation_config suppresses the GEM token
            mine = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            theirs = bare.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(mine, theirs)


def test_the_sentence_transformers_export_generates_as_the_base(sentence_transformers_export, base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = sentence_transformers_export
    bare = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / GENERATION_TOKENIZER)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            mine = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            theirs = bare.generate(input_ids=ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert torch.equal(mine, theirs)


def test_a_saved_sentence_transformer_keeps_the_gate(tmp_path, sentence_transformers_export, reference):
    from sentence_transformers import SentenceTransformer

    served = SentenceTransformer(str(sentence_transformers_export), device="cpu", trust_remote_code=True)
    served.save(str(tmp_path / "again"))
    again = SentenceTransformer(str(tmp_path / "again"), device="cpu", trust_remote_code=True)
    assert cosines(again.encode(TEXTS), reference).min() >= 0.99999


def test_an_adapter_without_tokenizer_files_merges_and_exports_with_its_bases(tmp_path, base, gated, reference):
    # the shipped adapter carries no tokenizer: the base's, plus the GEM token GEMModel adds, has the same ids
    bare = without_tokenizer(gated, tmp_path / "no-tokenizer")
    merge(base, bare, tmp_path / "merged")
    assert cosines(GEMModel.from_pretrained(tmp_path / "merged", dtype="float32").encode(TEXTS), reference).min() >= 0.99999
    export(base, bare, tmp_path / "vllm", "vllm")
    assert (tmp_path / "vllm" / "alora" / "adapter_config.json").is_file()


def test_gem_model_loads_the_merged_folder_gated(merged, base, gated, reference):
    model = GEMModel.from_pretrained(merged, dtype="float32")
    assert cosines(model.encode(TEXTS), reference).min() >= 0.99999
    bare = GEMModel.from_pretrained(base, adapter=None, dtype="float32")
    ids = bare.tokenizer("The dog", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert torch.equal(model.model(input_ids=ids).logits[..., :257], bare.model(input_ids=ids).logits[..., :257])
    with pytest.raises(GEMError, match="merged gated GEM checkpoint"):
        GEMModel.from_pretrained(merged, adapter=gated)


def test_the_merged_folder_is_the_base_plus_rows_and_an_activated_lora(merged, gated):
    from safetensors import safe_open

    report = json.loads((merged / "merge_report.json").read_text())
    gem_id = report["gem_token_ids"][0]
    assert report["activated_lora"] == "alora" and report["changed_tensors"] == 0  # the base's own rows untouched
    assert report["embedding_rows"] == [257, 258] and report["probe_max_logit_diff"] == 0.0
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["GEMGatedLlamaForCausalLM"]  # stock engines refuse it; the plugin serves it
    assert config["gem_gate"]["invocation_token_ids"] == [gem_id]
    assert gem_id in json.loads((merged / "generation_config.json").read_text())["suppress_tokens"]
    adapter = json.loads((merged / "alora" / "adapter_config.json").read_text())
    assert adapter["alora_invocation_tokens"] == [gem_id] and adapter["task_type"] == "CAUSAL_LM"
    assert not adapter.get("trainable_token_indices")
    with safe_open(str(merged / "alora" / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(".lora_A." in key or ".lora_B." in key for key in keys)
    tokenizers = {name: json.loads((merged / name / "tokenizer.json").read_text())["post_processor"]
                  for name in (".", EMBEDDING_TOKENIZER)}
    assert tokenizers["."] is None or "gem" not in json.dumps(tokenizers["."])
    assert "<|gem_0|>" in json.dumps(tokenizers[EMBEDDING_TOKENIZER])


def test_cli_merge_of_a_gated_adapter_says_where_the_lora_went(tmp_path, base, gated):
    result = CliRunner().invoke(main, ["merge", "--base", str(base), "--adapter", str(gated), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "PEFT activated LoRA in alora/" in result.output and "plain text vs base: max logit diff 0.00e+00" in result.output


@pytest.mark.parametrize("action", ["merge", "sentence-transformers", "vllm"])
def test_k_above_one_is_refused_in_one_line_before_any_weight_loads(tmp_path, root, base, action, monkeypatch):
    k2 = root / "gated-k2"
    if not k2.exists():
        strong_gated_adapter(base, k2, num_gem_tokens=2)
    for name in ("gem_adapter.adapters.merge", "gem_adapter.adapters.export"):
        monkeypatch.setattr(importlib.import_module(name), "write_gated_merged", lambda *a, **k: pytest.fail("weights loaded"))
    command = (["merge"] if action == "merge" else ["export", "--format", action]) + [
        "--base", str(base), "--adapter", str(k2), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "k = 2 GEM tokens" in result.output
    assert not (tmp_path / "x").exists()


def test_a_gguf_of_a_gated_adapter_is_refused_in_one_line(tmp_path, base, gated):
    result = CliRunner().invoke(main, ["export", "--format", "gguf", "--base", str(base), "--adapter", str(gated),
                                       "--out", str(tmp_path / "g")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "adapter_scope 'gem'" in result.output and not (tmp_path / "g").exists()


def test_the_vllm_export_is_the_merged_folder_for_the_plugin(tmp_path, base, gated, merged):
    report = export(base, gated, tmp_path / "v", "vllm")
    assert report.activated_lora == "alora" and report.embedding_tokenizer == EMBEDDING_TOKENIZER
    (command,) = [c for name, c in report.commands.items() if name.startswith("embeddings server")]
    assert f"vllm serve {tmp_path / 'v'} --runner pooling --tokenizer {tmp_path / 'v'}/{EMBEDDING_TOKENIZER}" in command
    assert json.loads((tmp_path / "v" / "config.json").read_text()) == json.loads((merged / "config.json").read_text())


def test_the_vllm_plugin_registers_every_gated_architecture(monkeypatch):
    """vLLM calls the entry point in each process; it names the classes by path, so vLLM imports them lazily."""
    import tomllib

    from gem_adapter.adapters import vllm_plugin

    registered = {}
    fake = types.ModuleType("vllm")
    fake.ModelRegistry = types.SimpleNamespace(register_model=lambda name, target: registered.__setitem__(name, target))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    vllm_plugin.register()
    vllm_plugin.register()  # vLLM may call it again: the same names
    assert registered == {f"GEMGated{name}": f"gem_adapter.adapters.vllm_gated:GEMGated{name}"
                          for name in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")}
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["vllm.general_plugins"] == {"gem_gated": "gem_adapter.adapters.vllm_plugin:register"}


def test_the_modules_outside_gem_adapters_imports_repeat_its_names():
    """The sentence-transformers module and the vLLM plugin import nothing of gem-adapter, so they repeat
    a few names; the copies must stay equal to the originals (vllm_gated imports vLLM: read as source)."""
    import ast

    from gem_adapter import scope
    from gem_adapter.adapters import gated, gem_gated_transformer, vllm_plugin

    assert gem_gated_transformer.ACTIVATED_LORA == scope.ACTIVATED_LORA
    assert gem_gated_transformer.GATED_ARCHITECTURE_PREFIX == gated.GATED_ARCHITECTURE_PREFIX == vllm_plugin.GATED_PREFIX
    source = Path(gated.__file__).with_name("vllm_gated.py").read_text()
    constants = {node.targets[0].id: node.value.value for node in ast.parse(source).body
                 if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                 and isinstance(node.value, ast.Constant)}
    assert constants["GATE_CONFIG_KEY"] == gated.GATE_CONFIG_KEY
