"""gem-adapter: text embeddings from a decoder-only LLM that keeps generating (GEM).

The core (errors, masking, pooling, hub, config, tokens, files, compat, runtime, model) loads
with ``import gem_adapter``; the wings' entry points (``train``, ``merge``, ``run_evaluation``,
``create_app`` ...) are imported on first use, so their optional dependencies (TRL, mteb,
FastAPI) are needed only by those who call them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import GEMConfig
from .errors import GEMConfigError, GEMError, IncompatibleError, ModelResolutionError
from .hub import DEFAULT_MODEL, cache_dir, resolve_base
from .masking import Segment, build_gem_attention_mask
from .model import SUPPORTED_ATTENTION, GEMModel
from .pooling import POOLING_MODES, pool
from .version import __version__

# Public names of the wings, loaded on first access: name -> wing package.
_WING_NAMES = {
    "GEMTrainingConfig": "training",
    "load_recipe": "training",
    "train": "training",
    "export": "adapters",
    "inspect": "adapters",
    "load_adapters": "adapters",
    "merge": "adapters",
    "stack": "adapters",
    "swap": "adapters",
    "run_evaluation": "evaluation",
    "create_app": "serving",
    "serve": "serving",
}

__all__ = [
    "DEFAULT_MODEL",
    "GEMConfig",
    "GEMConfigError",
    "GEMError",
    "GEMModel",
    "GEMTrainingConfig",
    "IncompatibleError",
    "ModelResolutionError",
    "POOLING_MODES",
    "SUPPORTED_ATTENTION",
    "Segment",
    "__version__",
    "build_gem_attention_mask",
    "cache_dir",
    "create_app",
    "export",
    "inspect",
    "load_adapters",
    "load_recipe",
    "merge",
    "pool",
    "resolve_base",
    "run_evaluation",
    "serve",
    "stack",
    "swap",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _WING_NAMES:
        return getattr(importlib.import_module(f".{_WING_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
