"""gem-adapter: text embeddings from a decoder-only LLM that keeps generating (GEM)."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import GEMConfig
from .errors import GEMConfigError, GEMError, IncompatibleError, ModelResolutionError
from .hub import DEFAULT_MODEL, cache_dir, resolve_base
from .masking import Segment, build_gem_attention_mask
from .model import SUPPORTED_ATTENTION, GEMModel
from .pooling import POOLING_MODES, pool

__all__ = [
    "DEFAULT_MODEL",
    "GEMConfig",
    "GEMConfigError",
    "GEMError",
    "GEMModel",
    "IncompatibleError",
    "ModelResolutionError",
    "POOLING_MODES",
    "SUPPORTED_ATTENTION",
    "Segment",
    "build_gem_attention_mask",
    "cache_dir",
    "pool",
    "resolve_base",
]
