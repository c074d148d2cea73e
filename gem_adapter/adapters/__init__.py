"""Adapter tools: merge, stack, swap (runtime and re-targeting) and inspect.

| module | what it does |
|---|---|
| ``files`` | read and validate adapter folders; atomic output folders |
| ``compat`` | is an adapter compatible with a base? (``IncompatibleError`` naming the mismatch) |
| ``merge`` | ``merge``: LoRA + GEM rows folded into a standalone checkpoint |
| ``stack`` | ``stack``: a GEM adapter combined with other LoRAs (PEFT ``add_weighted_adapter``) |
| ``runtime`` | ``load_adapter`` / ``use_adapter`` / ``disable_adapters`` / ``fuse_adapters`` on one loaded ``GEMModel`` |
| ``swap`` | ``swap``: re-target an adapter to a sibling checkpoint of the same architecture |
| ``describe`` | ``inspect``: what a folder is, from its files |

Every function checks its inputs before loading weights and writes through a staging
folder renamed into place, so a failure leaves no partial output.
"""

from __future__ import annotations

from .compat import BaseSpec, check_compatibility, spec_from_folder, spec_from_model
from .describe import format_inspection, inspect
from .files import AdapterFolder, atomic_output, read_adapter
from .merge import MergeReport, merge
from .runtime import (
    activate_adapters,
    active_adapters,
    adapter_names,
    disable_adapters,
    fuse_adapters,
    is_fused,
    load_adapter,
    load_adapters,
    unfuse_adapters,
    unload_adapter,
    use_adapter,
    using_adapter,
)
from .stack import METHODS, StackReport, parse_weights, stack
from .swap import SwapReport, swap

__all__ = [
    "METHODS",
    "AdapterFolder",
    "BaseSpec",
    "MergeReport",
    "StackReport",
    "SwapReport",
    "activate_adapters",
    "active_adapters",
    "adapter_names",
    "atomic_output",
    "check_compatibility",
    "disable_adapters",
    "format_inspection",
    "fuse_adapters",
    "inspect",
    "is_fused",
    "load_adapter",
    "load_adapters",
    "merge",
    "parse_weights",
    "read_adapter",
    "spec_from_folder",
    "spec_from_model",
    "stack",
    "swap",
    "unfuse_adapters",
    "unload_adapter",
    "use_adapter",
    "using_adapter",
]
