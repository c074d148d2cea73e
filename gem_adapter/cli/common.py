"""What every ``gem`` command shares: library errors become one-line CLI errors."""

from __future__ import annotations

import functools

import click

from ..errors import GEMError


def library_errors(command):
    """Turn library and input errors (``GEMError``, ``TypeError``, ``ValueError``) into one-line CLI errors."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (GEMError, TypeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper
