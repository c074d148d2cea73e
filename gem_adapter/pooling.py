"""Turning a sequence of hidden states into one vector per text.

``gem`` reads the GEM tokens (the method's embedding); ``mean`` and ``last`` are the
baselines a plain decoder offers, computed on the text without GEM tokens.
"""

from __future__ import annotations

import torch

from .masking import Segment

POOLING_MODES: tuple[str, ...] = ("gem", "mean", "last")


def pool(hidden: torch.Tensor, segment_ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` (batch, seq, dim) into a float32 (batch, dim) using the tokens' segments.

    gem:  mean of the hidden states at GEM positions (k of them per row).
    mean: mean over real, non-GEM tokens.
    last: the right-most real token, whatever side the padding is on.

    The sum and the division run in float32 whatever ``hidden``'s dtype: a bfloat16 mean over a
    long text would round at every addition (8 significant bits), and the vector normalised
    afterwards would keep bfloat16's rounding (norms 0.997-1.003 instead of 1).
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling mode {mode!r} is not one of {POOLING_MODES}")
    if mode == "last":
        seq_len = segment_ids.shape[1]
        positions = torch.arange(seq_len, device=segment_ids.device).expand_as(segment_ids)
        last = torch.where(segment_ids != Segment.PAD, positions, -1).max(dim=1).values
        if bool((last < 0).any()):
            raise ValueError("a row has no real token to pool")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
    if mode == "gem":
        selected = segment_ids == Segment.GEM
    else:
        selected = (segment_ids != Segment.PAD) & (segment_ids != Segment.GEM)
    counts = selected.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError(f"a row has no token to pool with mode {mode!r}")
    weights = selected.to(torch.float32).unsqueeze(-1)
    return (hidden.float() * weights).sum(dim=1) / counts.to(torch.float32)
