"""The GEM mask, specified rule by rule and checked against a per-element reading of the rules."""

from __future__ import annotations

import itertools

import pytest
import torch

from gem_adapter.masking import (
    Segment,
    build_gem_attention_mask,
    needs_custom_mask,
    position_ids_from_segments,
    to_additive_mask,
)

P, G, S, _ = Segment.PREFIX, Segment.GEM, Segment.SUFFIX, Segment.PAD


def rule_by_rule(segments: list[int]) -> list[list[bool]]:
    """The mask written out one (query, key) pair at a time, straight from the method."""
    n = len(segments)
    mask = [[False] * n for _ in range(n)]
    for q, k in itertools.product(range(n), range(n)):
        sq, sk = segments[q], segments[k]
        if sq == _:
            mask[q][k] = q == k
            continue
        mask[q][k] = (
            k <= q
            and sk != _
            and not (sq == S and sk == P)
            and not (sq == G and sk == G and q != k)
        )
    return mask


def test_example_from_docstring_right_padding():
    seg = torch.tensor([[P, P, G, G, S, S, _]])
    expected = torch.tensor(
        [
            # P  P  G  G  S  S  pad  (keys)
            [1, 0, 0, 0, 0, 0, 0],  # P
            [1, 1, 0, 0, 0, 0, 0],  # P
            [1, 1, 1, 0, 0, 0, 0],  # G sees the prefix and itself
            [1, 1, 0, 1, 0, 0, 0],  # second G does not see the first
            [0, 0, 1, 1, 1, 0, 0],  # S sees only GEM tokens and earlier suffix
            [0, 0, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],  # padding sees itself only (keeps softmax finite)
        ],
        dtype=torch.bool,
    )
    assert torch.equal(build_gem_attention_mask(seg)[0, 0], expected)


@pytest.mark.parametrize(
    "rows",
    [
        [[P, P, P, G, S, S, S], [P, P, G, S, S, _, _]],  # right padding
        [[P, P, P, G, S, S, S], [_, _, P, P, G, S, S]],  # left padding
        [[_, P, G, G, G, S, S], [P, P, P, P, P, P, P]],  # k = 3 next to a plain sample
        [[P, G, _, _, _, _, _], [_, _, _, _, _, P, G]],  # embedding rows
    ],
)
def test_batched_mask_equals_rule_by_rule(rows):
    mask = build_gem_attention_mask(torch.tensor(rows))
    assert mask.shape == (len(rows), 1, len(rows[0]), len(rows[0]))
    for row, segments in enumerate(rows):
        assert mask[row, 0].tolist() == rule_by_rule(segments)


def test_same_sequence_gets_same_mask_with_either_padding():
    core = [P, P, G, S, S]
    right = build_gem_attention_mask(torch.tensor([core + [_, _]]))[0, 0, :5, :5]
    left = build_gem_attention_mask(torch.tensor([[_, _] + core]))[0, 0, 2:, 2:]
    assert torch.equal(right, left)


def test_position_ids_count_real_tokens_only():
    seg = torch.tensor([[_, _, P, G, S], [P, G, S, _, _]])
    assert position_ids_from_segments(seg).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([[P, P, G], [P, G, _]], False),  # k = 1 embedding: plain causal
        ([[P, P, P]], False),  # plain text
        ([[P, G, G]], True),  # k = 2: GEM tokens must not see each other
        ([[P, G, S]], True),  # training sample
    ],
)
def test_needs_custom_mask(rows, expected):
    assert needs_custom_mask(torch.tensor(rows)) is expected


def test_additive_mask_blocks_with_lowest_value():
    mask = torch.tensor([[True, False]])
    additive = to_additive_mask(mask, torch.float32)
    assert additive.tolist() == [[0.0, torch.finfo(torch.float32).min]]


def test_rejects_wrong_rank():
    with pytest.raises(ValueError, match="batch, seq"):
        build_gem_attention_mask(torch.tensor([P, G]))
