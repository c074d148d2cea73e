"""GEMModel.encode / generate / from_pretrained on tiny random models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gem_adapter import GEMConfig, GEMError, GEMModel, ModelResolutionError

from conftest import cpu_4bit_paths, tiny_gem, use_cpu_4bit_path

TEXTS = [
    "short",
    "a somewhat longer sentence about guitars",
    "",
    "the stock market fell sharply today, analysts said",
    "x",
    "another one of medium length",
]


@pytest.fixture
def gem():
    return tiny_gem("llama", k=2)


def test_empty_list_gives_zero_rows(gem):
    out = gem.encode([])
    assert out.shape == (0, 32) and out.dtype == np.float32


def test_single_string_gives_a_vector(gem):
    assert gem.encode("hello").shape == (32,)


def test_order_is_input_order_whatever_the_batching(gem, architecture):
    gem = tiny_gem(architecture, k=2)
    together = gem.encode(TEXTS, batch_size=4)
    one_by_one = np.stack([gem.encode(text) for text in TEXTS])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    reversed_order = gem.encode(TEXTS[::-1], batch_size=3)
    np.testing.assert_allclose(reversed_order[::-1], together, atol=1e-5)


@pytest.mark.parametrize("pooling", ["gem", "mean", "last"])
def test_batch_size_one_and_32_agree(pooling):
    gem = tiny_gem("qwen2", k=1)
    texts = [t or "empty" for t in TEXTS] * 6
    np.testing.assert_allclose(
        gem.encode(texts, batch_size=1, pooling=pooling),
        gem.encode(texts, batch_size=32, pooling=pooling),
        atol=1e-5,
    )


def test_normalisation(gem):
    normed = gem.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)
    raw = gem.encode(TEXTS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), normed, atol=1e-6)


def test_tensor_output(gem):
    out = gem.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(out, torch.Tensor) and out.shape == (len(TEXTS), 32)


def test_poolings_differ(gem):
    by_mode = {mode: gem.encode(TEXTS[:2], pooling=mode) for mode in ("gem", "mean", "last")}
    assert not np.allclose(by_mode["gem"], by_mode["mean"])
    assert not np.allclose(by_mode["gem"], by_mode["last"])


def test_encode_poolings_gives_each_poolings_encode_from_one_pass(gem):
    texts = ["a short one", "a somewhat longer text than that", "x"]
    passes = []
    original = gem.hidden_states
    gem.hidden_states = lambda *args: passes.append(1) or original(*args)
    both = gem.encode_poolings(texts, batch_size=8, max_length=6, dimensions=16)
    assert len(passes) == 1 and list(both) == ["mean", "last"]
    for mode, vectors in both.items():
        np.testing.assert_allclose(vectors, gem.encode(texts, pooling=mode, max_length=6, dimensions=16), atol=1e-6)
    with pytest.raises(ValueError, match="poolings must be 'mean' and/or 'last'"):
        gem.encode_poolings(texts, poolings=("gem", "mean"))
    with pytest.raises(TypeError, match="takes a list of texts"):
        gem.encode_poolings("one text")


def test_empty_string_is_embedded_from_gem_tokens_alone(gem):
    vector = gem.encode("")
    assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 1e-6
    with pytest.raises(ValueError, match=r"sentences\[0\] is empty"):
        gem.encode([""], pooling="mean")


def test_non_string_names_its_index(gem):
    with pytest.raises(TypeError, match=r"sentences\[2\] is int"):
        gem.encode(["a", "b", 3])


def test_truncation_keeps_the_gem_tokens(gem):
    long_text = "abcdefghij" * 20  # 200 byte tokens
    seen = {}
    original = gem._embed_rows

    def spy(rows, pooling):
        seen["rows"] = rows
        return original(rows, pooling)

    gem._embed_rows = spy
    vector = gem.encode(long_text, max_length=16)
    ids, _segments = seen["rows"][0]
    assert len(ids) == 16 and ids[-2:] == gem.gem_token_ids
    # Same as embedding the first 14 tokens' worth of text ourselves.
    np.testing.assert_allclose(vector, gem.encode(long_text[:14], max_length=16), atol=1e-6)


def test_template_and_instructions_change_the_text(gem):
    plain = gem.encode("a cat")
    assert np.allclose(gem.encode("a cat", template="{text}"), plain, atol=1e-6)
    assert not np.allclose(gem.encode_query("a cat", instruction="Find pets"), plain)
    assert np.allclose(gem.encode_document("a cat"), plain, atol=1e-6)
    with pytest.raises(ValueError, match="must contain"):
        gem.encode("a cat", template="no placeholder")


def test_generate_never_emits_gem_tokens(gem):
    # Make the GEM tokens the model's favourite next token.
    with torch.no_grad():
        gem.model.get_output_embeddings().weight[gem.gem_token_ids] *= 1000
        gem.model.get_output_embeddings().bias = None
    prompt = torch.tensor([[5, 6, 7]])
    unsuppressed = gem.model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=256)
    assert set(unsuppressed[0, 3:].tolist()) & set(gem.gem_token_ids)
    output = gem.generate(prompt, max_new_tokens=5, do_sample=False)
    assert not set(output[0].tolist()) & set(gem.gem_token_ids)
    text = gem.generate(["hello", "hi"], max_new_tokens=4, do_sample=False)
    assert isinstance(text, list) and len(text) == 2


def test_generate_text_matches_token_generation(gem):
    ids = gem.tokenizer("hello", return_tensors="pt").input_ids
    tokens = gem.generate(ids, max_new_tokens=4, do_sample=False)
    assert gem.generate("hello", max_new_tokens=4, do_sample=False) == gem.tokenizer.decode(tokens[0, ids.shape[1]:])


def test_from_pretrained_folder(tiny_model_folder):
    gem = GEMModel.from_pretrained(tiny_model_folder, config=GEMConfig(num_gem_tokens=2))
    assert gem.encode(TEXTS).shape == (len(TEXTS), 32)
    assert gem.tokenizer.convert_ids_to_tokens(gem.gem_token_ids) == ["<|gem_0|>", "<|gem_1|>"]


def test_from_pretrained_refuses_unsupported_attention(tiny_model_folder):
    with pytest.raises(GEMError, match="flash_attention_2"):
        GEMModel.from_pretrained(tiny_model_folder, attn_implementation="flash_attention_2")


def test_eager_and_sdpa_models_embed_alike(tiny_model_folder):
    sdpa = GEMModel.from_pretrained(tiny_model_folder, config=GEMConfig(num_gem_tokens=2), dtype="float32")
    eager = GEMModel.from_pretrained(tiny_model_folder, config=GEMConfig(num_gem_tokens=2), attn_implementation="eager",
                                     dtype="float32")
    np.testing.assert_allclose(sdpa.encode(TEXTS), eager.encode(TEXTS), atol=1e-5)


def test_missing_adapter_folder_is_named(tiny_model_folder, tmp_path):
    with pytest.raises(ModelResolutionError, match="nowhere"):
        GEMModel.from_pretrained(tiny_model_folder, adapter=tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(ModelResolutionError, match="lacks adapter_config.json"):
        GEMModel.from_pretrained(tiny_model_folder, adapter=tmp_path / "half")


@pytest.mark.parametrize("cpu_path", cpu_4bit_paths())
def test_4bit_base_on_cpu(quantizable_model_folder, cpu_path):
    pytest.importorskip("bitsandbytes")
    quantized = GEMModel.from_pretrained(quantizable_model_folder, load_in_4bit=True)
    assert use_cpu_4bit_path(quantized.model, cpu_path) == 14  # 7 linear layers x 2 layers, lm_head kept
    full = GEMModel.from_pretrained(quantizable_model_folder)
    assert "Linear4bit" in type(quantized.model.model.layers[0].mlp.up_proj).__name__
    q, f = quantized.encode(TEXTS), full.encode(TEXTS)
    assert q.shape == f.shape and np.isfinite(q).all()
    cosines = (q * f).sum(axis=1)
    assert cosines.min() > 0.9, cosines  # NF4 error is small but not zero


def test_4bit_matrices_fit_the_avx512_bf16_repacking(quantizable_model_folder):
    """The repacking bitsandbytes does on AVX512-BF16 CPUs, run here on every CPU.

    With hidden 32 it raises "shape '[32, 0]' is invalid" (blocks of 64 input features);
    the tiny 4-bit models must fit it, and unpacking must give back the stored weights.
    """
    pytest.importorskip("bitsandbytes")
    import copy

    import bitsandbytes.functional as F

    if not hasattr(F, "_convert_weight_packed_for_cpu"):
        pytest.skip("this bitsandbytes has no CPU repacking")
    quantized = GEMModel.from_pretrained(quantizable_model_folder, load_in_4bit=True)
    layers = [m for m in quantized.model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert len(layers) == 14
    for layer in layers:
        state = copy.deepcopy(layer.weight.quant_state)
        packed, packed_state = F._convert_weight_packed_for_cpu(layer.weight.data.clone(), state)
        assert packed.shape == (layer.out_features, layer.in_features // 2)
        unpacked, _ = F._convert_weight_packed_for_cpu_inverse(packed, packed_state)
        torch.testing.assert_close(unpacked.reshape(-1), layer.weight.data.reshape(-1), atol=0, rtol=0)


def test_4bit_copy_is_cached_and_reloads_the_same_model(quantizable_model_folder, tmp_path):
    pytest.importorskip("bitsandbytes")
    from gem_adapter.hub import cache_dir

    tiny_model_folder = quantizable_model_folder

    copies = lambda: sorted(p.name for p in (cache_dir() / "nf4").glob("*") if not p.name.startswith("."))  # noqa: E731
    first = GEMModel.from_pretrained(tiny_model_folder, load_in_4bit=True)
    assert len(copies()) == 1
    again = GEMModel.from_pretrained(tiny_model_folder, load_in_4bit=True)  # from the cached copy
    assert "Linear4bit" in type(again.model.model.layers[0].mlp.up_proj).__name__
    np.testing.assert_array_equal(again.encode(TEXTS), first.encode(TEXTS))
    assert first.generate("ab", max_new_tokens=4, do_sample=False) == again.generate("ab", max_new_tokens=4, do_sample=False)

    uncached = GEMModel.from_pretrained(tiny_model_folder, load_in_4bit=True, cache_quantized=False)
    np.testing.assert_array_equal(uncached.encode(TEXTS), first.encode(TEXTS))
    GEMModel.from_pretrained(tiny_model_folder, load_in_4bit=True, compute_dtype="bfloat16")
    assert len(copies()) == 2  # other settings, other copy

    other = tmp_path / "other"
    shutil.copytree(tiny_model_folder, other)
    weights = other / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("mlp.up_proj.weight"))
    tensors[name] = tensors[name] * 2
    save_file(tensors, weights, metadata={"format": "pt"})
    changed = GEMModel.from_pretrained(other, load_in_4bit=True)  # changed weights are not served stale
    assert len(copies()) == 3
    assert not np.allclose(changed.encode(TEXTS), first.encode(TEXTS), atol=1e-4)


def test_adapter_template_is_the_default_and_wraps_instructions():
    wrapped = tiny_gem("llama", k=1, template='Say "{text}" now')
    plain = tiny_gem("llama", k=1)
    np.testing.assert_allclose(wrapped.encode("a cat"), plain.encode('Say "a cat" now'), atol=1e-6)
    np.testing.assert_allclose(
        wrapped.encode_query("a cat", instruction="Find pets"),
        plain.encode('Say "Instruct: Find pets\nQuery: a cat" now'), atol=1e-6,
    )
    # Baseline poolings read the bare text: the template belongs to the GEM embedding.
    np.testing.assert_allclose(wrapped.encode("a cat", pooling="mean"), plain.encode("a cat", pooling="mean"), atol=1e-6)
