"""The GEM attention mask, built for a whole padded batch with tensor operations.

Every token carries a segment id (``Segment``): padding, prefix, GEM token or suffix.
Query token q may attend to key token k when all of these hold:

* k <= q (causal) and k is not padding;
* not (q is suffix and k is prefix): the suffix sees the prefix only through the GEM tokens;
* not (q and k are two different GEM tokens): each GEM token summarises the prefix alone.

Because the rules read segment ids, not positions, the same function serves right and
left padding. Padding queries attend to themselves only, which keeps every softmax row
finite; their outputs are never read.

This module deliberately knows nothing about tokenizers or models.
"""

from __future__ import annotations

from enum import IntEnum

import torch


class Segment(IntEnum):
    """Role of a token in a GEM sequence. PAD is 0 so ``segment_ids != 0`` is the padding mask."""

    PAD = 0
    PREFIX = 1
    GEM = 2
    SUFFIX = 3


def build_gem_attention_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask of shape (batch, 1, seq, seq); True means "may attend".

    >>> seg = torch.tensor([[1, 1, 2, 3, 3]])   # prefix prefix GEM suffix suffix
    >>> build_gem_attention_mask(seg)[0, 0].int()
    tensor([[1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be (batch, seq), got shape {tuple(segment_ids.shape)}")
    seq_len = segment_ids.shape[1]
    device = segment_ids.device
    query = segment_ids[:, :, None]
    key = segment_ids[:, None, :]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril_()
    diagonal = torch.eye(seq_len, dtype=torch.bool, device=device)

    visible = causal & (key != Segment.PAD)
    visible &= ~((query == Segment.SUFFIX) & (key == Segment.PREFIX))
    visible &= ~((query == Segment.GEM) & (key == Segment.GEM) & ~diagonal)
    visible = torch.where(query == Segment.PAD, diagonal, visible)
    return visible[:, None]


def position_ids_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so left padding does not shift them."""
    real = (segment_ids != Segment.PAD).long()
    return (real.cumsum(-1) - 1).clamp_(min=0)


def needs_custom_mask(segment_ids: torch.Tensor) -> bool:
    """False when the GEM mask equals plain causal attention with padding.

    That is the case for embedding with k = 1 (nothing follows the single GEM token) and
    for plain text. Callers then pass a 2D padding mask, which every attention kernel
    accepts and which avoids materialising a (seq x seq) mask per row.
    """
    has_suffix = bool((segment_ids == Segment.SUFFIX).any())
    gem_per_row = (segment_ids == Segment.GEM).sum(-1)
    return has_suffix or bool((gem_per_row > 1).any())


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed and the dtype's lowest value elsewhere.

    Attention kernels that add the mask to the scores (eager) need this form; a boolean
    mask would be added as 0/1 and silently change nothing.
    """
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    blocked = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=mask.device)
    return torch.where(mask, zero, blocked)


def attention_inputs(
    segment_ids: torch.Tensor, implementation: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``attention_mask`` and ``position_ids`` a transformers decoder needs for these segments.

    A 2D padding mask when the GEM mask is plain causal (k = 1 embedding, plain text), which
    every kernel accepts; else the 4D GEM mask, made additive for kernels that add the mask
    to the scores (``eager``). Built where ``segment_ids`` live, i.e. on the model's device.
    """
    position_ids = position_ids_from_segments(segment_ids)
    if not needs_custom_mask(segment_ids):
        return (segment_ids != Segment.PAD).long(), position_ids
    return kernel_mask(build_gem_attention_mask(segment_ids), implementation, dtype), position_ids


def kernel_mask(mask: torch.Tensor, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask in the form the attention kernel takes: additive for ``eager``."""
    return to_additive_mask(mask, dtype) if implementation == "eager" else mask
