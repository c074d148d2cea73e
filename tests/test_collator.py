"""The GEM collator: what a batch looks like, sample by sample."""

from __future__ import annotations

import pytest
import torch

from gem_adapter.training.collator import IGNORE_INDEX, GEMCollator
from gem_adapter.masking import Segment, build_gem_attention_mask

P, G, S, _ = Segment.PREFIX, Segment.GEM, Segment.SUFFIX, Segment.PAD
GEM_ID, PAD_ID = 900, 0


def examples(lengths):
    return [{"input_ids": list(range(10 * (i + 1), 10 * (i + 1) + n)), "index": i} for i, n in enumerate(lengths)]


def collate(lengths, **kwargs):
    collator = GEMCollator(gem_token_ids=[GEM_ID], pad_token_id=PAD_ID, min_prefix_tokens=2, min_suffix_tokens=2, **kwargs)
    return collator(examples(lengths))


def test_gem_samples_label_only_their_suffix():
    batch = collate([8, 12, 6], gem_fraction=1.0)
    for row in range(3):
        ids, seg, labels = batch["input_ids"][row], batch["segment_ids"][row], batch["labels"][row]
        suffix = seg == S
        assert (seg == G).sum() == 1 and ids[seg == G].tolist() == [GEM_ID]
        assert torch.equal(labels[suffix], ids[suffix])
        assert (labels[~suffix] == IGNORE_INDEX).all()  # prefix, GEM token and padding
        assert (seg == P).sum() >= 2 and suffix.sum() >= 2


def test_plain_samples_label_every_real_token():
    batch = collate([8, 5], gem_fraction=0.0)
    assert not (batch["segment_ids"] == G).any()
    real = batch["segment_ids"] != _
    assert torch.equal(batch["labels"][real], batch["input_ids"][real])
    assert (batch["labels"][~real] == IGNORE_INDEX).all()
    assert (batch["input_ids"][~real] == PAD_ID).all()


def test_shapes_and_right_padding():
    batch = collate([8, 3, 12], gem_fraction=1.0)
    assert batch["input_ids"].shape == batch["segment_ids"].shape == batch["labels"].shape == (3, 13)
    assert batch["segment_ids"][1].tolist() == [P, P, P] + [_] * 10  # too short for GEM: plain
    mask = build_gem_attention_mask(batch["segment_ids"])
    assert mask.shape == (3, 1, 13, 13)


def test_mixture_follows_gem_fraction():
    batch = collate([10] * 400, gem_fraction=0.25)
    share = (batch["segment_ids"] == G).any(dim=1).float().mean().item()
    assert 0.18 < share < 0.32


def test_draws_depend_on_seed_epoch_and_index_only():
    a = collate([10, 12, 14], gem_fraction=0.5, seed=3)
    b = collate([10, 12, 14], gem_fraction=0.5, seed=3)
    assert torch.equal(a["input_ids"], b["input_ids"])
    # The same example drawn in another batch gets the same split.
    collator = GEMCollator(gem_token_ids=[GEM_ID], pad_token_id=PAD_ID, gem_fraction=1.0, seed=3)
    alone = collator([examples([10, 12, 14])[1]])
    together = collator(examples([10, 12, 14]))
    assert alone["input_ids"][0].tolist() == together["input_ids"][1, :13].tolist()
    other_seed = collate([10, 12, 14] * 5, gem_fraction=1.0, seed=4)
    assert not torch.equal(other_seed["input_ids"][:3], collate([10, 12, 14] * 5, gem_fraction=1.0, seed=3)["input_ids"][:3])
    collator.epoch = 1
    assert not torch.equal(collator(examples([30] * 5))["input_ids"], GEMCollator(
        gem_token_ids=[GEM_ID], pad_token_id=PAD_ID, gem_fraction=1.0, seed=3)(examples([30] * 5))["input_ids"])


@pytest.mark.parametrize("mode", ["crop", "dropout"])
def test_contrastive_views_are_embedding_rows(mode):
    batch = collate([10, 20], gem_fraction=0.5, contrastive=True, view_mode=mode, view_head_ids=[1, 2], view_tail_ids=[3])
    for view in ("view_a", "view_b"):
        ids, seg = batch[f"{view}_input_ids"], batch[f"{view}_segment_ids"]
        for row in range(2):
            real = ids[row][seg[row] != _].tolist()
            assert real[:2] == [1, 2] and real[-2:] == [3, GEM_ID]
            assert not (seg[row] == S).any()
    if mode == "dropout":
        assert torch.equal(batch["view_a_input_ids"], batch["view_b_input_ids"])
    else:
        assert not torch.equal(batch["view_a_input_ids"], batch["view_b_input_ids"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="gem_fraction"):
        GEMCollator(gem_token_ids=[1], pad_token_id=0, gem_fraction=1.5)
    with pytest.raises(ValueError, match="view_mode"):
        GEMCollator(gem_token_ids=[1], pad_token_id=0, view_mode="shuffle")
