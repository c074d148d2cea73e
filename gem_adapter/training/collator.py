"""The GEM collator: token chunks -> a padded batch of GEM and plain causal-LM samples.

Each chunk becomes, with probability ``gem_fraction``, a **GEM sample** -- ``prefix, GEM...,
suffix`` split at a random point, labels on the suffix only -- and otherwise a **plain
sample** with ordinary next-token labels on every token ("mixed NTP"). With
``contrastive=True`` it also emits two *views* of every chunk in embedding form
(``text, GEM...``) for an InfoNCE term: two random crops (``view_mode="crop"``) or the same
text twice, told apart by dropout alone (``"dropout"``), wrapped in the embedding template's token ids when one is set, exactly as
``GEMModel.encode`` wraps texts.

With ``decode`` (a ``TextDecoder``; set when the run distills from a teacher embedder, see
``distill.py``) every embedding row also keeps its text as a string: ``<name>_texts`` (e.g.
``view_a_texts``, ``pair_anchor_texts``) holds, row by row, the text of exactly the tokens that row
embeds, template and GEM tokens excluded.

With ``pairs`` (supervised pairs as token ids, see ``pairs.py``) and ``pairs_per_batch > 0``,
every batch also carries that many pairs drawn without replacement, in the same embedding
form as the views: ``pair_anchor_*``, ``pair_positive_*``, ``pair_negative_*`` (the hard
negatives of the drawn pairs that have one) and ``pair_mask``, True where a column must not
count as a negative for a row (same text as the row's positive, or the same ``group``:
anchor text or label). ``pair_positive_key``, ``pair_group_key`` and ``pair_negative_key``
(int64, one per row; ``text_key``) carry what that rule reads, so ``pair_mask`` can be rebuilt
over the pairs of every data-parallel process (``distributed.py``). The draw is a function of
(seed, epoch, the batch's example indices), so each data-parallel process draws its own pairs
and a resumed run the same ones.

Randomness is a pure function of (seed, epoch, example index), never of a running RNG, so
a run resumed from a checkpoint draws exactly what the uninterrupted run drew.

Example (k = 1, GEM id 9, pad id 0; the chunk [5, 6, 7, 8] drawn as a GEM sample split
after 2 tokens, the chunk [3, 4] drawn as plain)::

    input_ids    [[5, 6, 9, 7, 8], [3, 4, 0, 0, 0]]
    segment_ids  [[1, 1, 2, 3, 3], [1, 1, 0, 0, 0]]   # PREFIX=1 GEM=2 SUFFIX=3 PAD=0
    labels       [[-100, -100, -100, 7, 8], [3, 4, -100, -100, -100]]

Labels are unshifted, as in transformers: the loss predicts ``labels[t]`` from position
``t - 1``, so the first suffix token is predicted from the last GEM token. The 4D mask is
*not* built here: the trainer builds it from ``segment_ids`` on the model's device, which
keeps the (seq x seq) tensor out of the data loader and out of any padding code path.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..masking import Segment
from ..tokens import embedding_ids, pad_batch, plain_ids, split_ids

IGNORE_INDEX = -100
VIEW_MODES: tuple[str, ...] = ("crop", "dropout")
NO_GROUP = -1  # the group key of a pair without a group (text_key is never negative)


def text_key(value: list[int] | str) -> int:
    """A 63-bit key of a token-id list or a string, the same in every process and run (blake2b)."""
    digest = hashlib.blake2b(json.dumps(value).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def pair_mask(positive_keys: torch.Tensor, group_keys: torch.Tensor, negative_keys: torch.Tensor) -> torch.Tensor:
    """(n, n + m) bool, True where a column is not a negative of a row: the same text as the row's positive,
    or (positive columns) a pair of the same group. The row's own positive (the diagonal) stays False.

    Columns are the n positives then the m hard negatives, keyed by ``text_key``; group keys are
    ``NO_GROUP`` for pairs without one, which share a group with no other pair.
    """
    rows = positive_keys.shape[0]
    mask = positive_keys[:, None] == torch.cat([positive_keys, negative_keys])[None, :]
    mask[:, :rows] |= (group_keys[:, None] == group_keys[None, :]) & (group_keys[:, None] != NO_GROUP)
    mask[torch.arange(rows), torch.arange(rows)] = False
    return mask


@dataclass(frozen=True)
class TextDecoder:
    """Token ids -> the text they spell (special tokens dropped, outer spaces stripped), for a reader of strings."""

    tokenizer: Any

    def __call__(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


@dataclass
class GEMCollator:
    """Callable turning ``[{"input_ids": [...], "index": i}, ...]`` into model inputs."""

    gem_token_ids: list[int]
    pad_token_id: int
    gem_fraction: float = 0.5
    min_prefix_tokens: int = 4
    min_suffix_tokens: int = 4
    max_length: int = 128
    seed: int = 0
    contrastive: bool = False
    view_mode: str = "crop"
    min_crop_fraction: float = 0.6
    view_head_ids: list[int] = field(default_factory=list)
    view_tail_ids: list[int] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list, repr=False)
    pairs_per_batch: int = 0
    decode: Callable[[list[int]], str] | None = field(default=None, repr=False)
    epoch: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.gem_fraction <= 1.0:
            raise ValueError(f"gem_fraction must lie in [0, 1], got {self.gem_fraction}")
        if self.view_mode not in VIEW_MODES:
            raise ValueError(f"view_mode {self.view_mode!r} is not one of {VIEW_MODES}")
        if self.pairs_per_batch < 0:
            raise ValueError(f"pairs_per_batch must be >= 0, got {self.pairs_per_batch}")

    def rng_for(self, index: int) -> random.Random:
        # Seeding random.Random with a str is deterministic across processes (sha512 based).
        return random.Random(f"gem-collator/{self.seed}/{self.epoch}/{index}")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, segments, labels = [], [], []
        views_a, views_b, texts_a, texts_b = [], [], [], []
        for position, example in enumerate(examples):
            ids = list(example["input_ids"])
            rng = self.rng_for(int(example.get("index", position)))
            long_enough = len(ids) >= self.min_prefix_tokens + self.min_suffix_tokens
            if long_enough and rng.random() < self.gem_fraction:
                seq, seg = split_ids(
                    ids, self.gem_token_ids, rng, self.min_prefix_tokens, self.min_suffix_tokens, self.max_length
                )
                lab = [t if s == Segment.SUFFIX else IGNORE_INDEX for t, s in zip(seq, seg)]
            else:
                rng.random()  # keep the draw sequence the same length either way
                seq, seg = plain_ids(ids, self.max_length)
                lab = list(seq)
            sequences.append(seq)
            segments.append(seg)
            labels.append(lab)
            if self.contrastive:
                for views, texts in ((views_a, texts_a), (views_b, texts_b)):
                    view = self._view(ids, rng)
                    views.append(embedding_ids(self.view_head_ids + view + self.view_tail_ids, self.gem_token_ids,
                                               self.max_length))
                    if self.decode is not None:
                        texts.append(self.decode(view))

        input_ids, segment_ids = pad_batch(sequences, segments, self.pad_token_id)
        label_ids, _unused = pad_batch(labels, segments, IGNORE_INDEX)
        batch = {"input_ids": input_ids, "segment_ids": segment_ids, "labels": label_ids}
        if self.contrastive:
            for name, views, texts in (("view_a", views_a, texts_a), ("view_b", views_b, texts_b)):
                ids, segs = pad_batch([v[0] for v in views], [v[1] for v in views], self.pad_token_id)
                batch[f"{name}_input_ids"], batch[f"{name}_segment_ids"] = ids, segs
                if self.decode is not None:
                    batch[f"{name}_texts"] = texts
        if self.pairs and self.pairs_per_batch > 0:
            indices = [int(example.get("index", position)) for position, example in enumerate(examples)]
            batch.update(self.pair_views(indices))
        return batch

    def pairs_rng(self, indices: list[int]) -> random.Random:
        return random.Random(f"gem-pairs/{self.seed}/{self.epoch}/{','.join(map(str, indices))}")

    def pair_views(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The pairs drawn for the batch of examples ``indices``, as embedding rows and a mask."""
        rng = self.pairs_rng(indices)
        drawn = [self.pairs[i] for i in rng.sample(range(len(self.pairs)), min(self.pairs_per_batch, len(self.pairs)))]
        negatives = [p["negative"] for p in drawn if p.get("negative")]
        keys = {
            "pair_positive_key": torch.tensor([text_key(p["positive"]) for p in drawn], dtype=torch.long),
            "pair_group_key": torch.tensor([NO_GROUP if p.get("group") is None else text_key(p["group"]) for p in drawn],
                                           dtype=torch.long),
            "pair_negative_key": torch.tensor([text_key(n) for n in negatives], dtype=torch.long),
        }
        batch = {"pair_mask": pair_mask(keys["pair_positive_key"], keys["pair_group_key"], keys["pair_negative_key"]), **keys}
        rows = {"anchor": [p["anchor"] for p in drawn], "positive": [p["positive"] for p in drawn], "negative": negatives}
        for name, texts in rows.items():
            if texts:
                views = [self._embedding_row(ids) for ids in texts]
                ids, segs = pad_batch([v[0] for v in views], [v[1] for v in views], self.pad_token_id)
                batch[f"pair_{name}_input_ids"], batch[f"pair_{name}_segment_ids"] = ids, segs
                if self.decode is not None:
                    batch[f"pair_{name}_texts"] = [self.decode(self._embedded_text(text_ids)) for text_ids in texts]
        return batch

    def _embedded_text(self, ids: list[int]) -> list[int]:
        """The part of a text that ``_embedding_row`` keeps: cut so the template's tail always fits."""
        room = self.max_length - len(self.gem_token_ids) - len(self.view_head_ids) - len(self.view_tail_ids)
        return list(ids)[: max(room, 1)]

    def _embedding_row(self, ids: list[int]) -> tuple[list[int], list[int]]:
        """``head, text, tail, GEM...`` with the text cut so the template's tail always fits."""
        text = self.view_head_ids + self._embedded_text(ids) + self.view_tail_ids
        return embedding_ids(text, self.gem_token_ids, self.max_length)

    def _view(self, ids: list[int], rng: random.Random) -> list[int]:
        if self.view_mode == "dropout" or len(ids) < 4:
            return ids
        length = rng.randint(max(2, round(self.min_crop_fraction * len(ids))), len(ids))
        start = rng.randint(0, len(ids) - length)
        return ids[start : start + length]
