"""Library noise that is not the user's business, silenced where it starts; ``GEM_VERBOSE=1``
(``gem --verbose``) lets all of it through.

- **bitsandbytes.** PEFT imports it at import time whenever it is installed. On a CPU with
  AVX512-BF16, importing bitsandbytes asks the Hugging Face hub for a kernel and logs
  "Failed to load CPU gemm_4bit_forward from kernels-community ..." when it cannot (always
  offline), and the import costs seconds. ``import_peft`` imports PEFT with bitsandbytes hidden,
  so bitsandbytes is imported only when 4-bit is asked for (``import_bitsandbytes``). PEFT's
  4-bit layers are defined when first wrapped, not at import (its cached availability checks
  are cleared here), so a 4-bit load after a plain one in the same process still works
  (tests/test_quiet.py).
  PEFT also imports it whenever it wraps a layer, so every PEFT call that wraps a model runs
  inside ``peft_calls``, which keeps bitsandbytes out unless a 4-bit model already imported it.
- **Deprecation chatter raised inside PEFT**, e.g. transformers' FutureWarning for
  ``is_gradient_checkpointing``, which PEFT reads when it wraps a model: ``library_warnings``.

Core module: nothing of ``gem_adapter`` is imported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

VERBOSE_ENV = "GEM_VERBOSE"

# (message regex, category) of warnings raised inside the libraries on paths every user takes.
LIBRARY_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*is_gradient_checkpointing.* is deprecated", FutureWarning),
)
# bitsandbytes' CPU backend logs its failed hub-kernel fetch through this logger.
BITSANDBYTES_KERNEL_LOGGER = "bitsandbytes.backends.cpu.ops"


def verbose() -> bool:
    """Whether library warnings and loading bars should be shown (``GEM_VERBOSE`` set and not 0)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def import_peft(load_in_4bit: bool = False) -> None:
    """Import PEFT; without bitsandbytes unless ``load_in_4bit`` (then bitsandbytes first, quietly)."""
    if load_in_4bit:
        with contextlib.suppress(ImportError):  # not installed: the 4-bit load names the fix
            import_bitsandbytes()
    if "peft" in sys.modules:
        return
    with _bitsandbytes_hidden():
        import peft  # noqa: F401
        import peft.tuners.lora  # noqa: F401


@contextlib.contextmanager
def peft_calls() -> Iterator[None]:
    """Around a PEFT call that wraps a model in LoRA layers: its deprecation chatter hidden, and
    bitsandbytes kept out unless it is already imported (a 4-bit model imported it to load)."""
    with _bitsandbytes_hidden(), library_warnings():
        yield


@contextlib.contextmanager
def _bitsandbytes_hidden() -> Iterator[None]:
    """Make bitsandbytes look uninstalled inside the block, unless it is imported already or we are verbose.

    PEFT imports it when it is installed: at import (``peft.helpers``) and for every layer it wraps
    (``lora.model._create_new_module`` asks ``is_bnb_available()``); a 4-bit model has it imported already.
    """
    if "bitsandbytes" in sys.modules or verbose():
        yield
        return
    _forget_bitsandbytes_checks()
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # find_spec -> None, import -> ImportError
    try:
        yield
    finally:
        if sys.modules.get("bitsandbytes", 0) is None:
            del sys.modules["bitsandbytes"]
        _forget_bitsandbytes_checks()


def import_bitsandbytes() -> ModuleType:
    """Import bitsandbytes (4-bit was asked for), quietly, and let a PEFT imported without it see it."""
    if "bitsandbytes" not in sys.modules and not verbose():
        kernel_logger = logging.getLogger(BITSANDBYTES_KERNEL_LOGGER)
        level = kernel_logger.level
        kernel_logger.setLevel(logging.ERROR)  # the hub-kernel fetch fails offline; the plain CPU path is used
        try:
            import bitsandbytes
        finally:
            kernel_logger.setLevel(level)
    import bitsandbytes

    helpers = sys.modules.get("peft.helpers")
    if helpers is not None and getattr(helpers, "bnb", None) is None:
        helpers.bnb = bitsandbytes  # peft.helpers bound its name when bitsandbytes was hidden
    _forget_bitsandbytes_checks()
    return bitsandbytes


def _forget_bitsandbytes_checks() -> None:
    """Clear PEFT's cached "is bitsandbytes available" answers, so they are asked again."""
    utils = sys.modules.get("peft.import_utils")
    for name in ("is_bnb_available", "is_bnb_4bit_available"):
        check = getattr(utils, name, None)
        if hasattr(check, "cache_clear"):
            check.cache_clear()


@contextlib.contextmanager
def library_warnings() -> Iterator[None]:
    """Hide ``LIBRARY_WARNINGS`` inside the block (unless verbose); every other warning passes."""
    if verbose():
        yield
        return
    with warnings.catch_warnings():
        for message, category in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def quiet_loading_bars() -> None:
    """Turn off transformers' per-load "Loading weights" bar (CLI only); download bars stay on."""
    if verbose():
        return
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    downloads_shown = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # also switches off the hub's bars: put those back
    if downloads_shown:
        enable_progress_bars()
