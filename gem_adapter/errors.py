"""One exception family for the library.

Library code raises these; only ``cli/`` turns them into ``click.ClickException``.
Every message names the offending value and, where there is one, the fix.
"""

from __future__ import annotations


class GEMError(Exception):
    """Base class of every error this library raises on purpose."""


class GEMConfigError(GEMError, ValueError):
    """A configuration value (or recipe key) is invalid."""


class ModelResolutionError(GEMError):
    """A base model (alias, folder, .gguf, hub id) could not be found or read."""


class IncompatibleError(GEMError):
    """An adapter or checkpoint does not fit the model it is being applied to."""
