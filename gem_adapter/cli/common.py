"""What every ``gem`` command shares: one-line errors, ``--debug``, the option vocabulary.

Every error a user can cause ends as one line on stderr, naming the value and the fix:
library errors (``GEMError``, ``TypeError``, ``ValueError``) with their own message, file
system errors (``OSError``) with the path, anything else as ``internal error: ...``. With
``gem --debug`` (or ``GEM_DEBUG=1``) the exception propagates with its traceback instead.
"""

from __future__ import annotations

import errno
import functools
import os
from pathlib import Path

import click

from ..errors import GEMError

DEBUG_ENV = "GEM_DEBUG"


def debug_enabled() -> bool:
    """``gem --debug`` on the command line, or ``GEM_DEBUG`` set to anything but '', 0, false, no."""
    context = click.get_current_context(silent=True)
    if context is not None and context.find_root().meta.get("gem.debug"):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(message: str) -> str:
    """A message as one line: its lines joined with '; ' (blank lines dropped)."""
    parts = [part.strip() for part in str(message).replace("\r", "\n").split("\n")]
    return "; ".join(part for part in parts if part)


def describe_os_error(exc: OSError) -> str:
    """One line for a file system error: what failed, on which path, and what to check."""
    path = exc.filename if exc.filename is not None else None
    if path is None:
        return f"{exc.strerror or exc}; check the paths and their permissions"
    path = os.fsdecode(path)
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist; check the path"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder; give a file path"
    if isinstance(exc, NotADirectoryError):
        return f"{path}: a part of this path is a file, not a folder; check the path"
    if isinstance(exc, PermissionError):
        return f"permission denied for {path}; check its permissions or choose another path"
    if exc.errno == errno.EROFS:
        return f"{path} is on a read-only file system; choose another path"
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device for {path}; free some space or choose another path"
    return f"{exc.strerror or exc} for {path}; check the path"


def library_errors(command):
    """Turn every exception of ``command`` into a one-line CLI error (exit 1), unless debugging.

    ``GEMError``, ``TypeError``, ``ValueError``: the library's message. ``OSError``: the path
    and the failure. Anything else: ``internal error: ...``. ``click`` exceptions (usage
    errors, ``click.ClickException``) pass through untouched.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except Exception as exc:
            if debug_enabled():
                raise
            raise click.ClickException(error_line(exc)) from None

    return wrapper


def error_line(exc: Exception) -> str:
    """The one line ``library_errors`` prints for ``exc``."""
    if isinstance(exc, (GEMError, TypeError, ValueError)):
        return one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, OSError):
        return one_line(describe_os_error(exc))
    detail = one_line(str(exc))
    name = type(exc).__name__
    return f"internal error: {name}{': ' + detail if detail else ''} (run with --debug for the traceback)"


def pick_alias(value, alias_value, name: str, alias: str):
    """The value of option ``name``, or of its deprecated spelling ``alias`` (with a note on stderr)."""
    if alias_value is None or alias_value is False:
        return value
    if value not in (None, False) and value != alias_value:
        raise click.UsageError(f"{name} and {alias} are the same option; give only {name}")
    click.echo(f"note: {alias} is deprecated; use {name}", err=True)
    return alias_value


def require(value, name: str):
    """``value``, or the usage error click gives for a missing required option."""
    if value is None:
        raise click.UsageError(f"Missing option '{name}'.")
    return value


DTYPE_HELP = ("Weights' dtype. auto: bfloat16 where the device computes it natively (CUDA with bf16, a CPU "
              "with AMX-BF16/AVX512-BF16; see `gem info`), else float32.")


def dtype_option(command):
    """``--dtype auto|float32|bfloat16|float16`` (default auto), for the commands that load a model to run it."""
    return click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                        show_default=True, help=DTYPE_HELP)(command)


def adapter_options(command):
    """``--adapter FOLDER`` and ``--no-adapter``; the command gets ``adapter`` resolved by ``chosen_adapter``."""
    command = click.option("--no-adapter", is_flag=True,
                           help="The bare base: its GEM token untrained (no adapter, not even the shipped one).")(command)
    return click.option("--adapter", type=click.Path(path_type=Path), default=None,
                        help="GEM adapter folder written by `gem train`  [default: the adapter shipped for the "
                             "base alias smollm2-135m; none for other bases]")(command)


def chosen_adapter(base, adapter: Path | None, no_adapter: bool) -> Path | None:
    """The adapter a command uses: the one given, none with --no-adapter, else the shipped one (if any)."""
    from ..hub import shipped_adapter

    if adapter is not None and no_adapter:
        raise click.UsageError("give --adapter or --no-adapter, not both")
    if adapter is not None:
        if not adapter.is_dir():
            raise GEMError(f"adapter folder {adapter} does not exist; check the path")
        return adapter
    return None if no_adapter else shipped_adapter(base)


def given_or_shipped_adapter(base, adapter: Path | None) -> Path:
    """The adapter given, else the one shipped for the base alias ``base``; one line naming the fix when neither."""
    chosen = chosen_adapter(base, adapter, no_adapter=False)
    if chosen is None:
        raise GEMError(f"no adapter is shipped for base {base!r}; give --adapter FOLDER" if base is not None
                       else "give --adapter FOLDER, or --base smollm2-135m for the adapter shipped for it")
    return chosen


SHIPPED_ADAPTER_HELP = ("GEM adapter folder (gem train / stack / swap)  [default: the adapter shipped for the base "
                        "alias smollm2-135m, with --base smollm2-135m]")
