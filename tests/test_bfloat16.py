"""bfloat16, on every processor: the path ``dtype="auto"`` takes where bfloat16 is native.

bfloat16 runs everywhere (emulated, slower, where the CPU lacks AVX512-BF16/AMX), so these
tests pin ``dtype="bfloat16"`` instead of relying on what ``auto`` means on the machine.

Tolerances come from bfloat16's precision. It keeps 8 significant bits: its epsilon
``BF16_EPS = 2**-7`` is the gap between 1 and the next value, and a rounding moves a value by
at most half of it, relatively. The same text in another batch, or an adapter folded into the
weights instead of applied beside them, runs through other roundings (other kernel blockings;
``W + BA`` rounded once to 8 bits), so its final hidden states differ by bfloat16 roundings.
Pooled and normalised in float32, two such unit vectors stay within ``BF16_EPS`` of each other
in L2 norm (cosine >= 1 - BF16_EPS**2 / 2 = 0.99997); measured on these tiny models: at most
0.0027 across batches, 0.0034 fused against unfused. What bfloat16 must not change at all:
vectors come back float32 with norm 1 (within 1e-6), and a gated adapter leaves plain text
exactly the base's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, make_tokenizer, random_gem_adapter, save_tiny_base, tiny_model

from gem_adapter import GEMConfig, GEMModel

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2**-7
TEXTS = ["the dog near the river", "a boat", "Sentence 3 talks about the tree.", "x", "",
         "a much longer sentence that talks about many different things, " * 3]


def bfloat16_gem(architecture: str, k: int) -> GEMModel:
    return GEMModel(tiny_model(architecture).to(torch.bfloat16), make_tokenizer(), GEMConfig(num_gem_tokens=k))


def largest_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b, axis=1).max())


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bf16")
    return {architecture: save_tiny_base(root / architecture, architecture) for architecture in ARCHITECTURES}


@pytest.mark.parametrize("k", [1, 4])
def test_vectors_are_float32_unit_length_whatever_the_model_dtype(architecture, k):
    gem = bfloat16_gem(architecture, k)
    assert gem.model.dtype is torch.bfloat16
    for pooling, texts in (("gem", TEXTS), ("mean", TEXTS[:4]), ("last", TEXTS[:4])):
        for dimensions in (None, 8):
            vectors = gem.encode(texts, pooling=pooling, dimensions=dimensions)
            assert vectors.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6, err_msg=f"{pooling} {dimensions}")
    raw = gem.encode(TEXTS, normalize=False)
    cut = gem.encode(TEXTS, dimensions=8)  # the cut is of the float32 vector, normalised again
    np.testing.assert_allclose(cut, raw[:, :8] / np.linalg.norm(raw[:, :8], axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("k", [1, 4])
def test_a_text_gets_its_vector_whatever_else_is_in_the_batch(architecture, k):
    gem = bfloat16_gem(architecture, k)
    together = gem.encode(TEXTS)
    alone = np.stack([gem.encode(text) for text in TEXTS])
    pairs = gem.encode(TEXTS, batch_size=2)
    assert largest_distance(together, alone) <= BF16_EPS
    assert largest_distance(together, pairs) <= BF16_EPS
    # the same batch is the same computation: equal to the last bit
    np.testing.assert_array_equal(gem.encode(TEXTS), together)


def test_fused_adapter_gives_the_unfused_vectors_to_bfloat16_precision(bases, tmp_path):
    for architecture, base in bases.items():
        adapter = random_gem_adapter(base, tmp_path / architecture, seed=1, num_gem_tokens=2)
        fused = GEMModel.from_pretrained(base, adapter=adapter, dtype="bfloat16")
        unfused = GEMModel.from_pretrained(base, adapter=adapter, dtype="bfloat16", fuse=False)
        distance = largest_distance(fused.encode(TEXTS), unfused.encode(TEXTS))
        assert distance <= BF16_EPS, f"{architecture}: {distance}"
        prompts = ["The dog", "Another remark"]
        assert len(fused.generate(prompts, max_new_tokens=4, do_sample=False)) == 2


def test_gated_adapter_leaves_plain_text_exactly_the_bases_in_bfloat16(bases, tmp_path):
    for architecture, base in bases.items():
        adapter = random_gem_adapter(base, tmp_path / architecture, seed=1, num_gem_tokens=2, adapter_scope="gem")
        adapted = GEMModel.from_pretrained(base, adapter=adapter, dtype="bfloat16")
        bare = GEMModel.from_pretrained(base, adapter=None, dtype="bfloat16", config=adapted.config)
        ids = torch.tensor([adapted.tokenizer("The dog near the river")["input_ids"]])
        with torch.no_grad():
            assert torch.equal(adapted.model(input_ids=ids).logits, bare.model(input_ids=ids).logits), architecture
        greedy = {"max_new_tokens": 6, "do_sample": False}
        assert adapted.generate("The dog", **greedy) == bare.generate("The dog", **greedy)
        assert largest_distance(adapted.encode(TEXTS), bare.encode(TEXTS)) > BF16_EPS  # the embeddings are trained ones
