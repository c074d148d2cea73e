"""Adapter surgery on files: merge, stack, swap (re-targeting), inspect and export.

| module | what it does |
|---|---|
| ``merge`` | ``merge``: LoRA + GEM rows folded into a standalone checkpoint |
| ``stack`` | ``stack``: a GEM adapter combined with other LoRAs (PEFT ``add_weighted_adapter``) |
| ``swap`` | ``swap``: re-target an adapter to a sibling checkpoint; ``load_adapters``: one base, several adapters |
| ``describe`` | ``inspect``: what a folder is, from its files |
| ``export`` | ``export``: a folder sentence-transformers, vLLM or llama.cpp loads as it is, fed plain text |

Reading and checking adapter folders (``files``, ``compat``) and switching adapters on a
loaded model (``runtime``) live in the core below ``GEMModel``, because ``GEMModel`` itself
and the server use them too. Every function here checks its inputs before loading weights
and writes through a staging folder renamed into place, so a failure leaves no partial output.
"""

from __future__ import annotations

from .describe import format_inspection, inspect
from .export import FORMATS, ExportReport, export
from .merge import MergeReport, merge
from .stack import METHODS, StackReport, parse_weights, stack
from .swap import SwapReport, load_adapters, swap

__all__ = [
    "FORMATS",
    "METHODS",
    "ExportReport",
    "MergeReport",
    "StackReport",
    "SwapReport",
    "export",
    "format_inspection",
    "inspect",
    "load_adapters",
    "merge",
    "parse_weights",
    "stack",
    "swap",
]
