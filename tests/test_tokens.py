"""Adding GEM tokens to tokenizer and model, and placing them in id lists."""

from __future__ import annotations

import random

import pytest
import torch

from gem_adapter import GEMConfig, GEMError
from gem_adapter.masking import Segment
from gem_adapter.tokens import add_gem_tokens, embedding_ids, pad_batch, split_ids

from conftest import make_tokenizer, tiny_model

P, G, S, _ = Segment.PREFIX, Segment.GEM, Segment.SUFFIX, Segment.PAD


@pytest.mark.parametrize("tie", [False, True])
def test_new_rows_are_the_mean_of_existing_rows(architecture, tie):
    model, tokenizer = tiny_model(architecture, tie=tie), make_tokenizer()
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()

    ids = add_gem_tokens(tokenizer, model, GEMConfig(num_gem_tokens=3))

    assert ids == [257, 258, 259]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|gem_0|>", "<|gem_1|>", "<|gem_2|>"]
    weight_in = model.get_input_embeddings().weight
    weight_out = model.get_output_embeddings().weight
    assert weight_in.shape[0] == weight_out.shape[0] == 260
    for row in ids:
        torch.testing.assert_close(weight_in[row], before_in.mean(0))
        torch.testing.assert_close(weight_out[row], before_out.mean(0))
    # Old rows untouched; tied models stay tied after the resize.
    torch.testing.assert_close(weight_in[:257], before_in)
    assert (weight_out is weight_in) == tie


def test_adding_twice_is_a_no_op():
    model, tokenizer = tiny_model("llama"), make_tokenizer()
    config = GEMConfig(num_gem_tokens=2)
    first = add_gem_tokens(tokenizer, model, config)
    assert add_gem_tokens(tokenizer, model, config) == first
    assert len(tokenizer) == 259


def test_padded_vocabulary_reuses_spare_rows():
    model, tokenizer = tiny_model("qwen2"), make_tokenizer()
    model.resize_token_embeddings(300)  # Qwen-style: more rows than tokenizer entries
    ids = add_gem_tokens(tokenizer, model, GEMConfig())
    assert ids == [257] and model.get_input_embeddings().weight.shape[0] == 300


def test_partial_token_set_is_refused():
    model, tokenizer = tiny_model("llama"), make_tokenizer()
    tokenizer.add_tokens(["<|gem_0|>"], special_tokens=True)
    with pytest.raises(GEMError, match="only some of the GEM tokens"):
        add_gem_tokens(tokenizer, model, GEMConfig(num_gem_tokens=2))


def test_gem_tokens_are_single_tokens_and_survive_decoding():
    model, tokenizer = tiny_model("llama"), make_tokenizer()
    ids = add_gem_tokens(tokenizer, model, GEMConfig(num_gem_tokens=2))
    encoded = tokenizer("ab<|gem_0|><|gem_1|>", add_special_tokens=False).input_ids
    assert encoded[-2:] == ids
    assert tokenizer.decode(encoded, skip_special_tokens=True) == "ab"


def test_embedding_ids_truncate_the_text_never_the_gem_tokens():
    ids, seg = embedding_ids(list(range(10)), [900, 901], max_length=6)
    assert ids == [0, 1, 2, 3, 900, 901]
    assert seg == [P, P, P, P, G, G]
    assert embedding_ids([], [900], max_length=4) == ([900], [G])


def test_split_ids_respect_minimum_prefix_and_suffix():
    rng = random.Random(0)
    splits = set()
    for _trial in range(200):
        ids, seg = split_ids(list(range(12)), [900], rng, min_prefix=3, min_suffix=2, max_length=64)
        split = ids.index(900)
        splits.add(split)
        assert ids == list(range(split)) + [900] + list(range(split, 12))
        assert seg == [P] * split + [G] + [S] * (12 - split)
    assert splits == set(range(3, 11))  # every allowed split point is drawn


def test_split_ids_refuse_short_text():
    with pytest.raises(ValueError, match="fewer than min_prefix"):
        split_ids([1, 2, 3], [900], random.Random(0), min_prefix=2, min_suffix=2, max_length=64)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch(side):
    ids, seg = pad_batch([[1, 2, 3], [4]], [[P, P, G], [G]], pad_id=0, side=side)
    if side == "right":
        assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
        assert seg.tolist() == [[P, P, G], [G, _, _]]
    else:
        assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
        assert seg.tolist() == [[P, P, G], [_, _, G]]
