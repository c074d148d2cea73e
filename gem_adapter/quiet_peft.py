"""Importing this module imports PEFT the quiet way (``quiet.import_peft``: bitsandbytes kept out).

The wings whose own dependencies import PEFT at import time (TRL in ``training``,
sentence-transformers in ``evaluation``) import this module first, so that PEFT is already in
place, imported without bitsandbytes, when those libraries ask for it.
"""

from __future__ import annotations

from .quiet import import_peft

import_peft()
