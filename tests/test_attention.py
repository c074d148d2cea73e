"""Every attention kernel GEMModel allows must give what a naive masked softmax gives.

The reference below is written from the definition of attention (one query at a time,
softmax over the keys the mask allows), independently of any transformers kernel. It is
registered as an attention function, so the model runs the very same weights through it.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AttentionInterface

from gem_adapter import SUPPORTED_ATTENTION, GEMError, GEMModel
from gem_adapter.masking import Segment, build_gem_attention_mask, position_ids_from_segments

from conftest import make_tokenizer, tiny_gem, tiny_model


def naive_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    batch, heads, q_len, dim = query.shape
    groups = heads // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else 1 / math.sqrt(dim)
    out = torch.zeros_like(query)
    allowed = attention_mask.bool()
    for b in range(batch):
        for h in range(heads):
            for q in range(q_len):
                keys = allowed[b, 0, q].nonzero().flatten()
                scores = torch.stack([query[b, h, q] @ key[b, h, k] * scale for k in keys])
                weights = torch.softmax(scores, dim=0)
                out[b, h, q] = sum(w * value[b, h, k] for w, k in zip(weights, keys))
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("gem_naive_reference", naive_attention)

P, G, S, _ = Segment.PREFIX, Segment.GEM, Segment.SUFFIX, Segment.PAD


def gem_batch(gem_ids: list[int]):
    """Two rows with k GEM tokens each, one right- and one left-padded."""
    k = len(gem_ids)
    torch.manual_seed(1)
    seg = torch.tensor(
        [
            [P] * 4 + [G] * k + [S] * 3 + [_] * 2,
            [_] * 3 + [P] * 3 + [G] * k + [S] * 3,
        ]
    )
    ids = torch.randint(0, 256, seg.shape)
    gem = torch.tensor(gem_ids).repeat(2, 1)
    ids[seg == G] = gem.flatten()
    return ids, seg


@pytest.mark.parametrize("implementation", SUPPORTED_ATTENTION)
@pytest.mark.parametrize("k", [1, 2])
def test_supported_kernels_match_naive_reference(architecture, implementation, k):
    gem = tiny_gem(architecture, k=k, attn=implementation)
    ids, seg = gem_batch(gem.gem_token_ids)
    with torch.no_grad():
        logits = gem.forward(ids, seg).logits

        reference_model = gem.model
        reference_model.set_attn_implementation("gem_naive_reference")
        expected = reference_model(
            input_ids=ids, attention_mask=build_gem_attention_mask(seg),
            position_ids=position_ids_from_segments(seg),
        ).logits
    real = seg != _
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=1e-4)


def test_unsupported_kernel_is_refused():
    model = tiny_model("llama", attn="sdpa")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(GEMError, match="not supported"):
        GEMModel(model, make_tokenizer())
