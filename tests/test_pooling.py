"""Pooling reads the right positions whatever the padding side."""

from __future__ import annotations

import pytest
import torch

from gem_adapter import POOLING_MODES, pool
from gem_adapter.masking import Segment

P, G, _ = Segment.PREFIX, Segment.GEM, Segment.PAD


def test_each_mode_on_a_hand_made_batch():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)  # row0: 0..3, row1: 4..7
    seg = torch.tensor([[P, P, G, _], [_, P, G, G]])
    assert pool(hidden, seg, "gem").flatten().tolist() == [2.0, 6.5]
    assert pool(hidden, seg, "mean").flatten().tolist() == [0.5, 5.0]
    assert pool(hidden, seg, "last").flatten().tolist() == [2.0, 7.0]


def test_unknown_mode_lists_valid_ones():
    with pytest.raises(ValueError, match=str(POOLING_MODES).replace("(", r"\(").replace(")", r"\)")):
        pool(torch.zeros(1, 1, 1), torch.tensor([[P]]), "cls")


def test_gem_pooling_needs_gem_tokens():
    with pytest.raises(ValueError, match="no token to pool"):
        pool(torch.zeros(1, 2, 1), torch.tensor([[P, P]]), "gem")
