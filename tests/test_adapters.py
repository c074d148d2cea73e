"""Adapter tools on tiny models: merge, stack, runtime switching, swap, inspect, and their refusals.

Adapters are trained for a few steps on tiny random models (seconds); a plain PEFT LoRA
without GEM rows stands for "a LoRA trained elsewhere". Expected values are computed in
the tests from the input files, never written down.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import QUANTIZABLE, SENTENCES, make_config, make_tokenizer, tiny_model, tiny_training_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gem_adapter import (
    GEMConfig,
    GEMError,
    GEMModel,
    IncompatibleError,
    ModelResolutionError,
)
from gem_adapter.adapters import inspect, load_adapters, merge, stack, swap
from gem_adapter.runtime import (
    activate_adapters,
    active_adapters,
    disable_adapters,
    load_adapter,
    use_adapter,
    using_adapter,
)
from gem_adapter.training.recipes import load_recipe
from gem_adapter.training.run import train

# these tests compare numbers to float32 tolerances; the bfloat16 side is tests/test_bfloat16.py
pytestmark = pytest.mark.usefixtures("auto_is_float32")

TEXTS = ["the dog near the river", "a boat", "", "Sentence 3 talks about the tree."]
PROMPTS = ["The dog", "Another remark", "x"]


# ----------------------------------------------------------------------------- helpers
def tiny_folder(root: Path, name: str, architecture: str = "llama", tie: bool = False, seed: int = 0,
                tokenizer=None, **overrides) -> Path:
    """A tiny random model + byte tokenizer saved as a HF folder; ``overrides`` change its config."""
    from transformers import AutoModelForCausalLM

    folder = root / name
    if overrides or seed:
        config = make_config(architecture, tie=tie)
        values = {**config.to_dict(), **overrides}
        if architecture != "qwen3" and "head_dim" not in overrides:
            values["head_dim"] = values["hidden_size"] // values["num_attention_heads"]
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(type(config)(**values), dtype=torch.float32)
    else:
        model = tiny_model(architecture, tie=tie)
    model.save_pretrained(folder)
    (tokenizer or make_tokenizer()).save_pretrained(folder)
    return folder


def tiny_config(base, data, output, **overrides):
    return tiny_training_config(base, data, output, **{"save_steps": 100, **overrides})


def plain_lora(base: Path, out: Path, r: int = 4, alpha: int = 16, targets=("q_proj", "v_proj"), seed: int = 1) -> Path:
    """A PEFT LoRA "trained elsewhere": no GEM rows, no tokenizer, random (non-zero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                  init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.mul_(0.5)
    peft_model.save_pretrained(out)
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def logits_of(gem: GEMModel, text: str = "the dog near the river") -> torch.Tensor:
    ids = gem.tokenizer(text + "".join(gem.config.gem_tokens), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return gem.model(input_ids=ids).logits[0].float()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def no_staging_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if any(part in p.name for part in (".staging-", ".tmp-", ".old-"))]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def corpus(root) -> Path:
    path = root / "corpus.txt"
    path.write_text("\n\n".join(SENTENCES))
    return path


@pytest.fixture(scope="module")
def trained(root, corpus):
    """Lazily trained adapters, one per (architecture, tie, 4-bit)."""
    made: dict[tuple, tuple[Path, Path]] = {}

    def get(architecture: str = "llama", tie: bool = False, four_bit: bool = False) -> tuple[Path, Path]:
        key = (architecture, tie, four_bit)
        if key not in made:
            name = f"{architecture}{'-tied' if tie else ''}{'-4bit' if four_bit else ''}"
            # 4-bit: matrices that fit bitsandbytes' AVX512-BF16 CPU kernel (see conftest.QUANTIZABLE)
            base = root / f"base-{architecture}{'-tied' if tie else ''}{'-64' if four_bit else ''}"
            if not base.exists():
                tiny_folder(root, base.name, architecture, tie=tie, **(QUANTIZABLE if four_bit else {}))
            extra = dict(load_in_4bit=True, max_steps=2) if four_bit else {}
            made[key] = (base, train(tiny_config(base, corpus, root / f"adapter-{name}", **extra)))
        return made[key]

    return get


@pytest.fixture(scope="module")
def llama(trained) -> tuple[Path, Path]:
    return trained("llama")


@pytest.fixture(scope="module")
def style(root, llama) -> Path:
    return plain_lora(llama[0], root / "style-lora")


# ----------------------------------------------------------------------------- merge
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "qwen3"])
def test_merge_gives_the_adapter_models_embeddings_and_generations(tmp_path, trained, architecture):
    from transformers import AutoModelForCausalLM

    base, adapter = trained(architecture)
    report = merge(base, adapter, tmp_path / "merged")
    merged_folder = tmp_path / "merged"

    with_adapter = GEMModel.from_pretrained(base, adapter=adapter)
    merged = GEMModel.from_pretrained(merged_folder)
    assert cosines(with_adapter.encode(TEXTS), merged.encode(TEXTS)).min() >= 0.9999
    greedy = dict(max_new_tokens=8, do_sample=False)
    assert merged.generate(PROMPTS, **greedy) == with_adapter.generate(PROMPTS, **greedy)
    # the merge changed the model: an untrained base embeds differently
    untouched = GEMModel.from_pretrained(base)
    assert cosines(untouched.encode(TEXTS), merged.encode(TEXTS)).min() < 0.9999

    plain = AutoModelForCausalLM.from_pretrained(merged_folder)
    assert plain.get_input_embeddings().weight.shape[0] == len(merged.tokenizer) == 258
    assert getattr(plain.config, "quantization_config", None) is None
    # the report's largest weight change is the largest |merged - base| over the base tensors
    base_weights = load_file(str(base / "model.safetensors"))
    merged_weights = load_file(str(merged_folder / "model.safetensors"))
    largest = max((merged_weights[k][: v.shape[0]] - v).abs().max().item() for k, v in base_weights.items())
    assert report.max_abs_weight_diff == pytest.approx(largest, rel=1e-6) and largest > 0
    assert report.max_lora_delta == pytest.approx(largest, rel=1e-3)
    assert report.probe_min_cosine >= 0.9999
    assert json.loads((merged_folder / "merge_report.json").read_text())["max_abs_weight_diff"] == report.max_abs_weight_diff


def test_merged_checkpoint_serves_last_token_pooling_without_custom_mask(tmp_path, llama):
    from transformers import AutoModel, AutoTokenizer

    base, adapter = llama
    merge(base, adapter, tmp_path / "m")
    reference = GEMModel.from_pretrained(base, adapter=adapter).encode(TEXTS, normalize=False)

    plain = AutoModel.from_pretrained(tmp_path / "m")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "m")
    with torch.inference_mode():
        last = np.stack([
            plain(**tokenizer(text + "<|gem_0|>", return_tensors="pt")).last_hidden_state[0, -1].numpy() for text in TEXTS
        ])
    np.testing.assert_allclose(last, reference, atol=1e-4)

    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(str(tmp_path / "m"))
    served = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")],
                                 device="cpu")
    vectors = served.encode([text + "<|gem_0|>" for text in TEXTS], batch_size=4)
    assert cosines(vectors, reference).min() >= 0.9999


def test_merge_keeps_tied_embeddings_tied(tmp_path, trained):
    from transformers import AutoModelForCausalLM

    base, adapter = trained("llama", tie=True)
    report = merge(base, adapter, tmp_path / "m")
    assert report.tied_base and report.tied_output and report.untied_reason is None
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert plain.config.tie_word_embeddings
    assert plain.get_output_embeddings().weight.data_ptr() == plain.get_input_embeddings().weight.data_ptr()
    with_adapter = GEMModel.from_pretrained(base, adapter=adapter)
    merged = GEMModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(logits_of(merged), logits_of(with_adapter), atol=1e-4, rtol=1e-4)
    assert cosines(with_adapter.encode(TEXTS), merged.encode(TEXTS)).min() >= 0.9999


def test_merge_unties_embeddings_only_when_the_rows_really_differ(tmp_path, trained):
    """A LoRA on the tied output matrix must not leak into the input embedding."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from gem_adapter.training.trainer import write_adapter

    base, _ = trained("llama", tie=True)
    gem = GEMModel.from_pretrained(base)
    torch.manual_seed(3)
    peft_model = get_peft_model(gem.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"],
                                                      trainable_token_indices=gem.gem_token_ids, init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "trainable_tokens_delta" in name:
                parameter.add_(torch.randn_like(parameter))
    write_adapter(peft_model, gem.tokenizer, gem.config, tmp_path / "head-adapter")

    report = merge(base, tmp_path / "head-adapter", tmp_path / "m")
    assert report.tied_base and not report.tied_output and "lm_head" in report.untied_reason
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not plain.config.tie_word_embeddings
    with_adapter = GEMModel.from_pretrained(base, adapter=tmp_path / "head-adapter")
    assert not with_adapter.fuse_adapters()  # fusing would write the lm_head delta into the shared matrix
    merged = GEMModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(logits_of(merged), logits_of(with_adapter), atol=1e-4, rtol=1e-4)
    # the input embedding is the base's (plus the trained GEM row), untouched by the lm_head LoRA
    base_rows = load_file(str(base / "model.safetensors"))["model.embed_tokens.weight"]
    torch.testing.assert_close(plain.get_input_embeddings().weight[:257], base_rows, atol=0, rtol=0)


def test_merge_of_4bit_trained_adapter_uses_full_precision_base(tmp_path, trained):
    pytest.importorskip("bitsandbytes")
    base, adapter = trained("llama", four_bit=True)
    report = merge(base, adapter, tmp_path / "m", dtype="bfloat16")
    assert report.trained_in_4bit is True and report.dtype == "bfloat16"
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
        assert dtypes == {"BF16"} and not any("absmax" in k or "quant" in k for k in handle.keys())
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = GEMModel.from_pretrained(tmp_path / "m", dtype=torch.float32)
    full_precision = GEMModel.from_pretrained(base, adapter=adapter)  # the adapter on the unquantised base
    assert cosines(full_precision.encode(TEXTS), merged.encode(TEXTS)).min() >= 0.999  # bf16 rounding
    assert report.probe_min_cosine >= 0.9999  # float32 merge, before casting


# ----------------------------------------------------------------------------- stack
def _expected_delta(method, parts):
    """parts: [(weight, scaling, A, B)] of the adapters that adapt one module."""
    if method == "cat":
        return sum(w * s * (b @ a) for w, s, a, b in parts)
    a = sum(np.sign(w * s) * np.sqrt(abs(w * s)) * a for w, s, a, b in parts)
    b = sum(np.sqrt(abs(w * s)) * b for w, s, a, b in parts)
    return b @ a


@pytest.mark.parametrize("method, order", [("linear", ("gem", "style")), ("cat", ("style", "gem"))])
def test_stack_delta_is_the_hand_computed_combination_and_keeps_gem_rows(tmp_path, llama, style, method, order):
    base, adapter = llama
    paths = {"gem": adapter, "style": style}
    weights = [1.0, 0.5] if order[0] == "gem" else [0.5, 1.0]
    report = stack(base, {name: paths[name] for name in order}, tmp_path / "s", weights=weights, method=method)
    out = tmp_path / "s"
    config = json.loads((out / "adapter_config.json").read_text())
    result = tensors(out)
    inputs = {name: (tensors(paths[name]), json.loads((paths[name] / "adapter_config.json").read_text())) for name in order}

    modules = {k.removesuffix(".lora_A.weight") for t, _ in inputs.values() for k in t if k.endswith(".lora_A.weight")}
    assert report.lora_modules == len(modules) == 14
    scale = config["lora_alpha"] / config["r"]
    for module in modules:
        parts = []
        for name, weight in zip(order, weights):
            t, c = inputs[name]
            if f"{module}.lora_A.weight" in t:
                parts.append((weight, c["lora_alpha"] / c["r"], t[f"{module}.lora_A.weight"], t[f"{module}.lora_B.weight"]))
        expected = _expected_delta(method, parts)
        got = scale * result[f"{module}.lora_B.weight"] @ result[f"{module}.lora_A.weight"]
        torch.testing.assert_close(got, expected.to(got.dtype), atol=1e-6, rtol=1e-5)

    rows_key = next(k for k in inputs["gem"][0] if "trainable_tokens_delta" in k)
    torch.testing.assert_close(result[rows_key], inputs["gem"][0][rows_key], atol=0, rtol=0)
    assert config["trainable_token_indices"] == inputs["gem"][1]["trainable_token_indices"]
    loaded = GEMModel.from_pretrained(base, adapter=out)
    gem_id = loaded.gem_token_ids[0]
    row = loaded._causal_lm.get_input_embeddings()(torch.tensor([gem_id]))[0]
    torch.testing.assert_close(row, inputs["gem"][0][rows_key][0], atol=0, rtol=0)
    assert json.loads((out / "gem_config.json").read_text())["base_fingerprint"]


def test_adapters_active_together_equal_their_cat_stack(tmp_path, llama, style):
    base, adapter = llama
    stack(base, {"gem": adapter, "style": style}, tmp_path / "s", weights=[1, 1], method="cat")
    stacked = GEMModel.from_pretrained(base, adapter=tmp_path / "s")
    together = load_adapters(base, {"gem": adapter, "style": style})
    assert sorted(active_adapters(together)) == ["gem", "style"]
    torch.testing.assert_close(logits_of(together), logits_of(stacked), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(together.encode(TEXTS), stacked.encode(TEXTS), atol=1e-5)
    gem_only = GEMModel.from_pretrained(base, adapter=adapter)
    assert not torch.allclose(logits_of(together), logits_of(gem_only), atol=1e-3)


def test_stack_refusals(tmp_path, llama, style):
    base, adapter = llama
    with pytest.raises(GEMError, match="needs adapters of one rank"):
        stack(base, {"gem": adapter, "big": plain_lora(base, tmp_path / "r8", r=8)}, tmp_path / "x", method="linear")
    with pytest.raises(GEMError, match="none of the adapters is a GEM adapter"):
        stack(base, {"a": style, "b": style}, tmp_path / "x")
    with pytest.raises(GEMError, match="2 weights for 3 adapters"):
        stack(base, {"gem": adapter, "a": style, "b": style}, tmp_path / "x", weights=[1, 1])
    with pytest.raises(GEMError, match="not one of"):
        stack(base, {"gem": adapter, "a": style}, tmp_path / "x", method="average")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- runtime swap
def test_switching_adapters_at_runtime_restores_outputs_exactly(llama, style):
    base, adapter = llama
    bare = GEMModel.from_pretrained(base)
    base_vectors, base_logits = bare.encode(TEXTS), logits_of(bare)

    gem = GEMModel.from_pretrained(base)
    load_adapter(gem, adapter, "gem")
    np.testing.assert_array_equal(gem.encode(TEXTS), base_vectors)  # loading does not activate
    load_adapter(gem, style, "style")
    use_adapter(gem, "gem")
    with_gem = gem.encode(TEXTS)
    np.testing.assert_allclose(with_gem, GEMModel.from_pretrained(base, adapter=adapter).encode(TEXTS), atol=1e-6)
    use_adapter(gem, "style")
    style_logits = logits_of(gem)
    assert not np.allclose(gem.encode(TEXTS), with_gem, atol=1e-3)
    assert not torch.allclose(style_logits, base_logits, atol=1e-3)
    use_adapter(gem, "gem")
    np.testing.assert_array_equal(gem.encode(TEXTS), with_gem)
    disable_adapters(gem)
    assert active_adapters(gem) == []
    np.testing.assert_array_equal(gem.encode(TEXTS), base_vectors)
    torch.testing.assert_close(logits_of(gem), base_logits, atol=0, rtol=0)

    # generate with one adapter, embed with another, without reloading
    use_adapter(gem, "gem")
    with using_adapter(gem, "style"):
        torch.testing.assert_close(logits_of(gem), style_logits, atol=0, rtol=0)
    assert active_adapters(gem) == ["gem"]
    np.testing.assert_array_equal(gem.encode(TEXTS), with_gem)


def test_fused_adapter_gives_the_unfused_outputs_and_switching_unfuses(llama, style):
    from gem_adapter.runtime import is_fused

    base, adapter = llama
    unfused = GEMModel.from_pretrained(base, adapter=adapter, fuse=False)
    fused = GEMModel.from_pretrained(base, adapter=adapter)  # fused by default
    assert is_fused(fused) and not is_fused(unfused)
    np.testing.assert_allclose(fused.encode(TEXTS), unfused.encode(TEXTS), atol=1e-5)
    torch.testing.assert_close(logits_of(fused), logits_of(unfused), atol=1e-4, rtol=0)
    assert fused.generate(PROMPTS, max_new_tokens=6, do_sample=False) == unfused.generate(PROMPTS, max_new_tokens=6, do_sample=False)

    bare = GEMModel.from_pretrained(base)
    load_adapter(fused, style, "style")  # any change of adapters takes the fused delta out first
    assert not is_fused(fused)
    disable_adapters(fused)
    torch.testing.assert_close(logits_of(fused), logits_of(bare), atol=1e-6, rtol=0)
    use_adapter(fused, "default")
    assert fused.fuse_adapters()
    fused.unfuse_adapters()
    np.testing.assert_allclose(fused.encode(TEXTS), unfused.encode(TEXTS), atol=1e-6)


def test_runtime_refusals(root, llama, style):
    base, adapter = llama
    gem = GEMModel.from_pretrained(base, adapter=adapter)  # PEFT's "default"
    load_adapter(gem, adapter, "again")
    with pytest.raises(GEMError, match="only one GEM adapter can be active"):
        activate_adapters(gem, ["default", "again"])
    with pytest.raises(GEMError, match="already loaded"):
        load_adapter(gem, style, "again")
    with pytest.raises(GEMError, match="no adapter named"):
        use_adapter(gem, "missing")
    other = tiny_folder(root, "rt-wide", hidden_size=64, intermediate_size=128)
    wide = GEMModel.from_pretrained(other)
    with pytest.raises(IncompatibleError, match="adapter hidden size 32 != base 64"):
        load_adapter(wide, adapter, "gem")
    assert not hasattr(wide.model, "peft_config")  # nothing was attached


def test_unloading_the_last_adapter_returns_the_bare_base_and_loading_works_again(llama):
    base, adapter = llama
    gem = GEMModel.from_pretrained(base)
    bare = gem.encode(TEXTS)
    load_adapter(gem, adapter, "gem", activate=True)
    adapted = gem.encode(TEXTS)
    assert np.abs(adapted - bare).max() > 1e-3
    gem.unload_adapter("gem")  # PEFT alone leaves a dangling active adapter here
    assert gem.adapter_names() == [] and gem.active_adapters() == []
    np.testing.assert_allclose(gem.encode(TEXTS), bare, atol=1e-6)
    load_adapter(gem, adapter, "gem", activate=True)
    np.testing.assert_allclose(gem.encode(TEXTS), adapted, atol=1e-6)


# ----------------------------------------------------------------------------- swap (re-target)
def test_swap_retargets_an_adapter_to_a_sibling_checkpoint(tmp_path, root, llama):
    from transformers import AutoConfig

    from gem_adapter.config import base_fingerprint

    base, adapter = llama
    sibling = tiny_folder(root, "sibling", seed=7)  # same architecture, other weights ("instruct")
    report = swap(sibling, adapter, tmp_path / "a2", merge_model=True)
    out = tmp_path / "a2"
    gem_config = json.loads((out / "gem_config.json").read_text())
    assert gem_config["base_model"] == str(sibling)
    assert gem_config["base_fingerprint"] == base_fingerprint(AutoConfig.from_pretrained(sibling))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(sibling)

    retargeted = GEMModel.from_pretrained(sibling, adapter=out).encode(TEXTS)
    np.testing.assert_allclose(retargeted, GEMModel.from_pretrained(sibling, adapter=adapter).encode(TEXTS), atol=1e-6)
    assert not np.allclose(retargeted, GEMModel.from_pretrained(base, adapter=adapter).encode(TEXTS), atol=1e-3)
    assert report.merged is not None and Path(report.merged.out) == Path(f"{out}-merged")
    merged = GEMModel.from_pretrained(f"{out}-merged").encode(TEXTS)
    assert cosines(merged, retargeted).min() >= 0.9999


INCOMPATIBLE = {
    "hidden": (dict(hidden_size=64, intermediate_size=128), "adapter hidden size 32 != base 64"),
    "layers": (dict(num_hidden_layers=3), "adapter layer count 2 != base 3"),
    "heads": (dict(num_attention_heads=8), "adapter attention heads 4 != base 8"),
    "kv_heads": (dict(num_key_value_heads=4), "adapter key/value heads 2 != base 4"),
    "architecture": (dict(architecture="qwen2"), r"adapter architecture \(model_type\) llama != base qwen2"),
}


@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_incompatible_bases_are_refused_with_the_mismatch_named(tmp_path, root, llama, style, case):
    overrides, message = INCOMPATIBLE[case]
    overrides = dict(overrides)
    architecture = overrides.pop("architecture", "llama")
    other = tiny_folder(root, f"other-{case}", architecture, **overrides)
    _, adapter = llama
    with pytest.raises(IncompatibleError, match=message):
        merge(other, adapter, tmp_path / "m")
    with pytest.raises(IncompatibleError, match=message):
        swap(other, adapter, tmp_path / "a2", merge_model=True)
    with pytest.raises(IncompatibleError, match=message):
        stack(other, {"gem": adapter, "style": style}, tmp_path / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _orphan(adapter: Path, target: Path) -> Path:
    """A copy of ``adapter`` whose recorded base no longer exists."""
    shutil.copytree(adapter, target)
    for name, key in (("gem_config.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        data = json.loads((target / name).read_text())
        data[key] = "/nonexistent/base"
        (target / name).write_text(json.dumps(data))
    return target


@pytest.mark.parametrize("case, message", [
    ("hidden", "adapter hidden size 32 != base 64"),
    ("layers", "adapter layer count 2 != base 3"),
    ("heads", "adapter head layout"),
    ("architecture", "adapter architecture fingerprint"),
])
def test_mismatch_is_named_from_tensor_shapes_when_the_source_base_is_gone(tmp_path, root, llama, case, message):
    overrides = dict(INCOMPATIBLE[case][0])
    architecture = overrides.pop("architecture", "llama")
    other = tiny_folder(root, f"other-{case}", architecture, **overrides) if not (root / f"other-{case}").exists() else root / f"other-{case}"
    orphan = _orphan(llama[1], tmp_path / "orphan")
    with pytest.raises(IncompatibleError, match=message):
        merge(other, orphan, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_vocabulary_and_module_mismatches_are_refused(tmp_path, root, llama):
    base, adapter = llama
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    other_vocab = tiny_folder(root, "other-vocab", tokenizer=tokenizer, vocab_size=258)
    with pytest.raises(IncompatibleError, match=r"adapter vocabulary \(257 tokens besides GEM\) != base vocabulary \(258"):
        merge(other_vocab, adapter, tmp_path / "m")

    merge(base, adapter, tmp_path / "merged")  # a merged checkpoint already holds <|gem_0|>
    with pytest.raises(IncompatibleError, match="GEM token.*already exist in the base tokenizer"):
        merge(tmp_path / "merged", adapter, tmp_path / "m")

    renamed = tmp_path / "renamed"
    shutil.copytree(adapter, renamed)
    moved = {k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.qkv_proj"): v for k, v in tensors(adapter).items()}
    save_file(moved, str(renamed / "adapter_model.safetensors"))
    with pytest.raises(IncompatibleError, match="says target_modules=.* 1 of them not targeted \\(qkv_proj"):
        merge(base, renamed, tmp_path / "m")  # the weights no longer match their own config
    config = json.loads((renamed / "adapter_config.json").read_text())
    config["target_modules"] = [t.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.qkv_proj")
                                for t in config["target_modules"]]
    (renamed / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(IncompatibleError, match="LoRA target module 'model.layers.0.self_attn.qkv_proj' is not in the base"):
        merge(base, renamed, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- files and outputs
def test_missing_corrupt_and_pickled_adapters(tmp_path, llama):
    base, adapter = llama
    with pytest.raises(ModelResolutionError, match="does not exist"):
        merge(base, tmp_path / "nowhere", tmp_path / "m")

    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(GEMError, match="not valid JSON"):
        merge(base, broken, tmp_path / "m")

    truncated = tmp_path / "truncated"
    shutil.copytree(adapter, truncated)
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(GEMError, match="corrupt or truncated"):
        merge(base, truncated, tmp_path / "m")

    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    torch.save(tensors(adapter), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    with pytest.raises(GEMError, match="pickle.*--allow-pickle"):
        merge(base, pickled, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    report = merge(base, pickled, tmp_path / "m", allow_pickle=True)
    assert report.probe_min_cosine >= 0.9999


def test_existing_output_needs_force_and_inputs_are_never_overwritten(tmp_path, llama):
    base, adapter = llama
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GEMError, match="exists; pass --force"):
        merge(base, adapter, out)
    assert (out / "keep.txt").read_text() == "mine"
    merge(base, adapter, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    with pytest.raises(GEMError, match="would overwrite the input"):
        merge(base, adapter, adapter, force=True)
    assert no_staging_left(tmp_path)


def test_interrupted_writes_leave_no_output(tmp_path, llama, style, monkeypatch):
    base, adapter = llama

    def crash(self, folder):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(GEMConfig, "save", crash)  # the model and tokenizer are already written then
    with pytest.raises(RuntimeError, match="simulated crash"):
        merge(base, adapter, tmp_path / "m")
    assert not (tmp_path / "m").exists() and no_staging_left(tmp_path)

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("previous")
    with pytest.raises(RuntimeError, match="simulated crash"):
        merge(base, adapter, tmp_path / "old", force=True)
    assert (tmp_path / "old" / "keep.txt").read_text() == "previous" and no_staging_left(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        swap(base, adapter, tmp_path / "a2")
    with pytest.raises(RuntimeError, match="simulated crash"):
        stack(base, {"gem": adapter, "style": style}, tmp_path / "s")
    assert not (tmp_path / "a2").exists() and not (tmp_path / "s").exists() and no_staging_left(tmp_path)


# ----------------------------------------------------------------------------- inspect and CLI
def test_inspect_describes_adapters_and_merged_checkpoints(tmp_path, llama, style):
    base, adapter = llama
    info = inspect(adapter)
    saved = json.loads((adapter / "adapter_config.json").read_text())
    assert info["kind"] == "GEM adapter" and info["k"] == 1 and info["gem_tokens"] == ["<|gem_0|>"]
    assert info["gem_token_ids"] == info["trainable_token_indices"] == saved["trainable_token_indices"]
    assert info["lora"]["r"] == saved["r"] and info["lora"]["alpha"] == saved["lora_alpha"]
    assert info["lora"]["modules"] == 14 and "q_proj" in info["lora"]["target_module_names"]
    assert info["files"]["adapter_model.safetensors"] == (adapter / "adapter_model.safetensors").stat().st_size
    assert info["base_model"] == str(base) and info["base_fingerprint"]

    assert inspect(style)["kind"] == "plain LoRA adapter"
    merge(base, adapter, tmp_path / "m")
    merged = inspect(tmp_path / "m")
    assert merged["kind"] == "merged GEM checkpoint" and merged["fingerprint_matches"]
    assert merged["embedding_rows"] == 258 and merged["architecture"]["hidden_size"] == 32
    assert merged["merge_report"]["max_abs_weight_diff"] > 0
    with pytest.raises(GEMError, match="neither an adapter"):
        inspect(tmp_path)


def test_cli_commands(tmp_path, root, llama, style):
    import click

    from gem_adapter.cli.adapters import (
        inspect_command,
        merge_command,
        stack_command,
        swap_command,
    )

    @click.group()
    def cli():
        pass

    for command in (merge_command, stack_command, swap_command, inspect_command):
        cli.add_command(command)
    base, adapter = llama
    runner = CliRunner()
    args = ["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "m")]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "largest weight change vs base" in result.output
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--force" in again.output
    recorded = runner.invoke(cli, ["merge", "--adapter", str(adapter), "--out", str(tmp_path / "m2"), "--json"])
    assert recorded.exit_code == 0 and json.loads(recorded.stdout)["base"] == str(base)  # base from gem_config.json
    shown = runner.invoke(cli, ["inspect", str(tmp_path / "m")])
    assert shown.exit_code == 0 and "merged GEM checkpoint" in shown.output
    as_json = runner.invoke(cli, ["inspect", str(adapter), "--json"])
    assert json.loads(as_json.output)["k"] == 1

    stacked = runner.invoke(cli, ["stack", "--base", str(base), "--adapter", f"gem={adapter}", "--adapter",
                                  f"style={style}", "--weights", "1,0.5", "--method", "cat", "--out", str(tmp_path / "s")])
    assert stacked.exit_code == 0, stacked.output
    assert inspect(tmp_path / "s")["kind"] == "GEM adapter"
    bad = runner.invoke(cli, ["stack", "--base", str(base), "--adapter", "no-equals-sign", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "NAME=FOLDER" in bad.output

    wide = root / "other-hidden" if (root / "other-hidden").exists() else tiny_folder(root, "other-hidden", hidden_size=64, intermediate_size=128)
    refused = runner.invoke(cli, ["swap", "--base", str(wide), "--adapter", str(adapter), "--out", str(tmp_path / "a2")])
    assert refused.exit_code == 1 and "adapter hidden size 32 != base 64" in refused.output
    assert not (tmp_path / "a2").exists()


# ----------------------------------------------------------------------------- real model
@pytest.mark.real_model
def test_real_model_merge_keeps_embeddings_and_generation(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(SENTENCES))
    config = load_recipe("smollm2-135m-all-tokens", dict(  # all tokens: the LoRA folds into the weights
        data=str(corpus), output_dir=str(tmp_path / "adapter"), max_steps=2, per_device_train_batch_size=4,
        max_chunk_tokens=32, lora_r=4, lora_alpha=8, eval_chunks=4, eval_strategy="no", save_steps=100,
        warmup_steps=0, learning_rate=1e-3, disable_tqdm=True, logging_steps=1,
        pairs_data=None, pairs_sources=None,  # the merge does not depend on the terms; no shared data needed
    ))
    adapter = train(config)
    report = merge(config.base_model, adapter, tmp_path / "merged")
    print("\n".join(["", *report.lines()]))
    assert report.max_abs_weight_diff > 0 and report.tied_base == report.tied_output

    with_adapter = GEMModel.from_pretrained(config.base_model, adapter=adapter)
    merged = GEMModel.from_pretrained(tmp_path / "merged")
    texts = ["A man is playing a guitar.", "The stock market fell sharply.", "Paris is in France."]
    similarity = cosines(with_adapter.encode(texts), merged.encode(texts))
    print(f"real-model merge: embedding cosine min {similarity.min():.7f}")
    assert similarity.min() >= 0.9999
    prompt = "The capital of France is"
    greedy = {"max_new_tokens": 8, "do_sample": False}
    continuation = merged.generate(prompt, **greedy)
    print(f"real-model merge: {prompt!r} -> {continuation!r}")
    assert continuation == with_adapter.generate(prompt, **greedy)
