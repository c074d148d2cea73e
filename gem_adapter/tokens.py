"""GEM special tokens: adding them to a tokenizer and model, and placing them in id lists.

Placement has two forms:

* embedding: ``text, GEM...`` -- the GEM tokens go last, and truncation trims the text,
  never the GEM tokens;
* training: ``prefix, GEM..., suffix`` at a random split point, so the suffix must be
  predicted from the GEM tokens alone (see ``masking``).

Each placement returns the ids together with their ``Segment`` ids, which is all that the
mask builder and the pooler need.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from .config import GEMConfig
from .errors import GEMError
from .masking import Segment


def add_gem_tokens(tokenizer, model, config: GEMConfig, initialize_rows: bool = True) -> list[int]:
    """Make sure the tokenizer and the model know the GEM tokens; return their ids.

    With ``initialize_rows`` the GEM embedding rows are set to the mean of all rows before
    them: a neutral point the model already "understands", rather than a random vector
    whose norm the layers never saw. Pass False only for a checkpoint whose GEM rows were
    trained (a merged GEM model). With tied input/output embeddings (SmolLM2,
    Qwen2.5-0.5B) the one shared matrix gets the rows; with untied ones both matrices do.
    Vocabularies padded beyond the tokenizer (Qwen) reuse their spare rows.
    """
    wanted = config.gem_tokens
    vocab = tokenizer.get_vocab()
    present = [t for t in wanted if t in vocab]
    if present and present != wanted:
        raise GEMError(
            f"tokenizer has only some of the GEM tokens ({present} of {wanted}); "
            "load the tokenizer saved with the adapter, or a clean base tokenizer"
        )
    if not present:
        tokenizer.add_tokens(wanted, special_tokens=True)
    gem_ids = tokenizer.convert_tokens_to_ids(wanted)

    rows = model.get_input_embeddings().weight.shape[0]
    needed = max(gem_ids) + 1
    if rows < needed:
        if not initialize_rows:
            raise GEMError(
                f"model has {rows} embedding rows but the GEM token ids reach {needed - 1}; "
                "this checkpoint does not hold trained GEM rows - load it as a base model instead"
            )
        # mean_resizing=False: the rows are set below, deterministically.
        model.resize_token_embeddings(needed, mean_resizing=False)
    if initialize_rows:
        _init_rows_with_mean(model, gem_ids, min(gem_ids))
    return gem_ids


@torch.no_grad()
def _init_rows_with_mean(model, row_ids: list[int], original_rows: int) -> None:
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not matrices[0]:
        matrices.append(output.weight)
    for weight in matrices:
        mean = weight[:original_rows].float().mean(dim=0).to(weight.dtype)
        weight[row_ids] = mean


def leading_special_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before any text: a BOS for Llama 3, none for SmolLM2/Qwen."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return list(with_special[:start])
    return []


def embedding_ids(text_ids: Sequence[int], gem_ids: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
    """``text, GEM...`` truncated to ``max_length`` by cutting the end of the text."""
    keep = max_length - len(gem_ids)
    if keep < 0:
        raise ValueError(f"max_length {max_length} leaves no room for {len(gem_ids)} GEM tokens")
    text = list(text_ids[:keep])
    return text + list(gem_ids), [Segment.PREFIX] * len(text) + [Segment.GEM] * len(gem_ids)


def plain_ids(text_ids: Sequence[int], max_length: int) -> tuple[list[int], list[int]]:
    """The text alone (baseline poolings and plain causal-LM samples)."""
    text = list(text_ids[:max_length])
    return text, [Segment.PREFIX] * len(text)


def split_ids(
    text_ids: Sequence[int],
    gem_ids: Sequence[int],
    rng: random.Random,
    min_prefix: int,
    min_suffix: int,
    max_length: int,
) -> tuple[list[int], list[int]]:
    """``prefix, GEM..., suffix`` with the split drawn uniformly from the allowed range.

    Raises ValueError when the text is shorter than ``min_prefix + min_suffix`` tokens.
    """
    text = list(text_ids[: max_length - len(gem_ids)])
    if len(text) < min_prefix + min_suffix:
        raise ValueError(
            f"text has {len(text)} tokens, fewer than min_prefix + min_suffix = {min_prefix + min_suffix}"
        )
    split = rng.randint(min_prefix, len(text) - min_suffix)
    ids = text[:split] + list(gem_ids) + text[split:]
    segments = (
        [Segment.PREFIX] * split + [Segment.GEM] * len(gem_ids) + [Segment.SUFFIX] * (len(text) - split)
    )
    return ids, segments


def pad_batch(
    sequences: Sequence[Sequence[int]],
    segments: Sequence[Sequence[int]],
    pad_id: int,
    side: str = "right",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length rows into (input_ids, segment_ids); padding gets Segment.PAD."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    width = max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    segment_ids = torch.full((len(sequences), width), int(Segment.PAD), dtype=torch.long)
    for row, (ids, segs) in enumerate(zip(sequences, segments)):
        n = len(ids)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        input_ids[row, cols] = torch.as_tensor(ids, dtype=torch.long)
        segment_ids[row, cols] = torch.as_tensor([int(s) for s in segs], dtype=torch.long)
    return input_ids, segment_ids
