"""Training a GEM adapter: corpus -> chunks -> GEM samples -> TRL trainer -> adapter folder.

| module | what it does |
|---|---|
| ``data`` | read corpora (.txt, .jsonl, NLTK .zip, saved datasets), sentence/paragraph chunks |
| ``pairs`` | supervised pairs: the JSONL format, its reader, a builder from benchmark train splits |
| ``collator`` | chunks -> GEM samples (random split, labels on the suffix) and plain samples, contrastive views |
| ``distill`` | distillation from a teacher embedder (all-MiniLM-L6-v2): the batch's similarity matrix |
| ``trainer`` | ``GEMTrainingConfig`` (extends TRL's ``SFTConfig``) and ``GEMTrainer``: the loss under the GEM mask |
| ``recipes`` | YAML recipes -> validated ``GEMTrainingConfig``; ``--set key=value`` overrides |
| ``selection`` | ``validation_eval`` / ``select_best_by``: validation scores at each evaluation, the best checkpoint kept |
| ``run`` | ``train(config)``: the whole job, checked before any model loads |

``trainer`` and ``run`` import TRL (the ``train`` extra); their names are loaded on first
use, so reading data or recipes does not pull TRL in.
"""

from __future__ import annotations

import importlib
from typing import Any

from .. import quiet_peft  # noqa: F401  (first: TRL imports PEFT, which would import bitsandbytes)
from .collator import IGNORE_INDEX, GEMCollator
from .data import jsonl_texts, make_chunks, read_jsonl, read_texts, split_sentences, train_eval_split
from .pairs import SOURCES as PAIR_SOURCES
from .pairs import build_pairs, count_by_source, load_pairs, read_pairs, train_splits_used, write_pairs
from .recipes import RECIPE_DIR, load_recipe, parse_overrides

_LAZY = {
    "GEMTrainer": "trainer",
    "GEMTrainingConfig": "trainer",
    "train": "run",
}

__all__ = [
    "IGNORE_INDEX",
    "PAIR_SOURCES",
    "RECIPE_DIR",
    "GEMCollator",
    "GEMTrainer",
    "GEMTrainingConfig",
    "build_pairs",
    "count_by_source",
    "jsonl_texts",
    "load_pairs",
    "load_recipe",
    "make_chunks",
    "parse_overrides",
    "read_jsonl",
    "read_pairs",
    "read_texts",
    "split_sentences",
    "train",
    "train_eval_split",
    "train_splits_used",
    "write_pairs",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
