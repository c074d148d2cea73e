"""Property-based tests of the GEM mask (``masking``) and token placement (``tokens``).

Hypothesis draws batches of ``prefix, GEM..., suffix`` and ``text, GEM...`` rows of random
lengths, k = 1..4 and either padding side; each property is checked against the row's own
segment list, written out here independently of the implementation.
"""

from __future__ import annotations

import random

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gem_adapter.masking import (
    Segment,
    attention_inputs,
    build_gem_attention_mask,
    needs_custom_mask,
    position_ids_from_segments,
)
from gem_adapter.tokens import embedding_ids, pad_batch, split_ids

PROFILE = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GEM_BASE = 1000  # GEM token ids are 1000.., text ids are below


@st.composite
def rows(draw, max_rows: int = 4):
    """One padded batch: per row (prefix length, k, suffix length), and the padding side."""
    count = draw(st.integers(1, max_rows))
    shapes = [(draw(st.integers(0, 7)), draw(st.integers(1, 4)), draw(st.integers(0, 7))) for _ in range(count)]
    side = draw(st.sampled_from(["left", "right"]))
    sequences, segments = [], []
    for prefix, k, suffix in shapes:
        segs = [Segment.PREFIX] * prefix + [Segment.GEM] * k + [Segment.SUFFIX] * suffix
        sequences.append(list(range(len(segs))))
        segments.append(segs)
    input_ids, segment_ids = pad_batch(sequences, segments, pad_id=0, side=side)
    return shapes, side, segment_ids


def expected_visible(segs: list[int], q: int, k: int) -> bool:
    """The rules, position by position, from the module docstring."""
    if segs[q] == Segment.PAD:
        return q == k
    if k > q or segs[k] == Segment.PAD:
        return False
    if segs[q] == Segment.SUFFIX and segs[k] == Segment.PREFIX:
        return False
    if segs[q] == Segment.GEM and segs[k] == Segment.GEM and q != k:
        return False
    return True


@PROFILE
@given(rows())
def test_mask_follows_every_rule_on_every_row(batch):
    shapes, side, segment_ids = batch
    mask = build_gem_attention_mask(segment_ids)
    assert mask.shape == (len(shapes), 1, segment_ids.shape[1], segment_ids.shape[1]) and mask.dtype == torch.bool
    for row in range(len(shapes)):
        segs = segment_ids[row].tolist()
        m = mask[row, 0]
        n = len(segs)
        for q in range(n):
            assert bool(m[q, q]), "every token attends itself (padding included, to keep softmax finite)"
            for k in range(n):
                assert bool(m[q, k]) == expected_visible(segs, q, k), (segs, q, k)


@PROFILE
@given(rows())
def test_mask_invariants_stated_directly(batch):
    shapes, side, segment_ids = batch
    mask = build_gem_attention_mask(segment_ids)[:, 0]
    query = segment_ids[:, :, None]
    key = segment_ids[:, None, :]
    eye = torch.eye(segment_ids.shape[1], dtype=torch.bool)
    # the suffix never attends the prefix
    assert not (mask & (query == Segment.SUFFIX) & (key == Segment.PREFIX)).any()
    # GEM tokens never attend each other
    assert not (mask & (query == Segment.GEM) & (key == Segment.GEM) & ~eye).any()
    # causality
    assert not (mask & ~torch.ones_like(eye).tril()).any()
    # padding keys are seen by no real token; padding queries see themselves only
    real_query = query != Segment.PAD
    assert not (mask & real_query & (key == Segment.PAD)).any()
    assert torch.equal(mask & ~real_query, eye & ~real_query)
    # every GEM token sees the whole prefix of its row; every suffix token sees every GEM token
    assert torch.equal(mask & (query == Segment.GEM) & (key == Segment.PREFIX),
                       (query == Segment.GEM) & (key == Segment.PREFIX))
    assert torch.equal(mask & (query == Segment.SUFFIX) & (key == Segment.GEM),
                       (query == Segment.SUFFIX) & (key == Segment.GEM))


@PROFILE
@given(rows())
def test_positions_ignore_padding_and_agree_across_padding_sides(batch):
    shapes, side, segment_ids = batch
    positions = position_ids_from_segments(segment_ids)
    for row, (prefix, k, suffix) in enumerate(shapes):
        real = segment_ids[row] != Segment.PAD
        assert positions[row][real].tolist() == list(range(prefix + k + suffix))
    other = "right" if side == "left" else "left"
    segs = [segment_ids[r][segment_ids[r] != Segment.PAD].tolist() for r in range(len(shapes))]
    _, flipped = pad_batch([list(range(len(s))) for s in segs], segs, 0, side=other)
    for row in range(len(shapes)):
        a = positions[row][segment_ids[row] != Segment.PAD]
        b = position_ids_from_segments(flipped)[row][flipped[row] != Segment.PAD]
        assert torch.equal(a, b)


@PROFILE
@given(rows())
def test_padding_side_does_not_change_what_real_tokens_see(batch):
    shapes, side, segment_ids = batch
    other = "right" if side == "left" else "left"
    segs = [segment_ids[r][segment_ids[r] != Segment.PAD].tolist() for r in range(len(shapes))]
    _, flipped = pad_batch([list(range(len(s))) for s in segs], segs, 0, side=other)
    for mask_a, seg_a, mask_b, seg_b in zip(build_gem_attention_mask(segment_ids)[:, 0], segment_ids,
                                            build_gem_attention_mask(flipped)[:, 0], flipped):
        real_a, real_b = seg_a != Segment.PAD, seg_b != Segment.PAD
        assert torch.equal(mask_a[real_a][:, real_a], mask_b[real_b][:, real_b])


@PROFILE
@given(rows())
def test_the_plain_mask_is_used_only_where_it_equals_the_gem_mask(batch):
    shapes, side, segment_ids = batch
    mask = build_gem_attention_mask(segment_ids)[:, 0]
    real = segment_ids != Segment.PAD
    causal = torch.ones(mask.shape[-2:], dtype=torch.bool).tril() & real[:, None, :] & real[:, :, None]
    differs = not torch.equal(mask & real[:, :, None], causal)
    needed = needs_custom_mask(segment_ids)
    assert needed or not differs, "the 2D padding mask is used where the GEM mask differs from it"
    if all(k == 1 and suffix == 0 for _, k, suffix in shapes):
        assert not needed  # embedding with k = 1: plain causal attention, the cheap path
    attention_mask, _ = attention_inputs(segment_ids, "sdpa", torch.float32)
    assert attention_mask.dim() == (4 if needed else 2)


@PROFILE
@given(text=st.lists(st.integers(0, GEM_BASE - 1), max_size=40), k=st.integers(1, 4), max_length=st.integers(1, 48))
def test_embedding_ids_keep_all_gem_tokens_last_and_cut_only_text(text, k, max_length):
    gem = list(range(GEM_BASE, GEM_BASE + k))
    if max_length < k:
        try:
            embedding_ids(text, gem, max_length)
        except ValueError as exc:
            assert str(max_length) in str(exc)
            return
        raise AssertionError("max_length below k must be refused")
    ids, segments = embedding_ids(text, gem, max_length)
    assert ids[-k:] == gem and segments[-k:] == [Segment.GEM] * k
    kept = ids[:-k]
    assert kept == text[: len(kept)]  # a head of the text, in order: only its end is cut
    assert len(ids) == min(len(text) + k, max_length)
    assert segments[:-k] == [Segment.PREFIX] * len(kept)


@PROFILE
@given(text=st.lists(st.integers(0, GEM_BASE - 1), max_size=40), k=st.integers(1, 4),
       min_prefix=st.integers(0, 6), min_suffix=st.integers(0, 6), max_length=st.integers(5, 48),
       seed=st.integers(0, 2**16))
def test_split_ids_respects_the_minimums_and_keeps_every_token(text, k, min_prefix, min_suffix, max_length, seed):
    gem = list(range(GEM_BASE, GEM_BASE + k))
    usable = text[: max_length - k]
    if len(usable) < min_prefix + min_suffix:
        try:
            split_ids(text, gem, random.Random(seed), min_prefix, min_suffix, max_length)
        except ValueError:
            return
        raise AssertionError("a text shorter than min_prefix + min_suffix must be refused")
    ids, segments = split_ids(text, gem, random.Random(seed), min_prefix, min_suffix, max_length)
    start = ids.index(gem[0])
    assert ids[start:start + k] == gem and segments[start:start + k] == [Segment.GEM] * k
    prefix, suffix = ids[:start], ids[start + k:]
    assert len(prefix) >= min_prefix and len(suffix) >= min_suffix
    assert prefix + suffix == usable and len(ids) <= max_length
    assert segments == [Segment.PREFIX] * len(prefix) + [Segment.GEM] * k + [Segment.SUFFIX] * len(suffix)
    # the same seed gives the same split
    assert split_ids(text, gem, random.Random(seed), min_prefix, min_suffix, max_length) == (ids, segments)
