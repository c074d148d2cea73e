"""The ``gem`` click group; each command group lives in a module of its own beside this one.

Every exception of a command becomes a one-line ``click.ClickException`` in ``cli/`` and
nowhere else (``common.library_errors``), so every command fails with one line that names
the problem and the fix; ``gem --debug`` (or ``GEM_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import click

from ..hub import DEFAULT_MODEL
from ..quiet import VERBOSE_ENV, quiet_loading_bars
from ..version import __version__
from .adapters import inspect_command, merge_command, stack_command, swap_command
from .common import DEBUG_ENV, library_errors
from .embed import embed_command
from .evaluate import eval_command
from .export import export_command
from .pairs import pairs_command
from .serve import serve_command
from .train import train_command


@click.group()
@click.version_option(__version__, prog_name="gem-adapter")
@click.option("--debug", is_flag=True, help=f"Show the full traceback of an error (also: {DEBUG_ENV}=1).")
@click.option("--verbose", is_flag=True,
              help=f"Show the libraries' own warnings and model-loading bars, hidden by default (also: {VERBOSE_ENV}=1).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """GEM: embeddings from a decoder LLM that keeps generating.

    \b
    Examples:
      gem info
      gem embed --input texts.txt --out emb.npy
      gem embed --base ./my-llama --adapter ./gem-adapter --input docs.jsonl --out docs.npy
    """
    ctx.meta["gem.debug"] = debug
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # read where the noise starts (quiet.py), in this process and its children
    elif ctx.invoked_subcommand not in (None, "info"):
        quiet_loading_bars()


@main.command()
@library_errors
def info() -> None:
    """Print versions, bfloat16 support (what --dtype auto picks), the cache location and the default model."""
    import importlib.metadata as metadata

    from ..hub import alias_status, cache_dir, shipped_adapter
    from ..precision import describe

    click.echo(f"gem-adapter {__version__} (python {sys.version.split()[0]})")
    for package in ("torch", "transformers", "peft", "trl", "bitsandbytes", "mteb", "sentence-transformers"):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        click.echo(f"{package}: {version}")
    click.echo(describe("cpu"))
    if torch_cuda_available():
        click.echo(describe("cuda").replace("bfloat16:", "bfloat16 on cuda:", 1))
    click.echo(f"cache: {cache_dir()}")
    click.echo(f"default model {alias_status(DEFAULT_MODEL)}")
    shipped = shipped_adapter(DEFAULT_MODEL)
    if shipped:
        from ..config import GEMConfig

        scope = GEMConfig.load(shipped).adapter_scope
        click.echo(f"shipped adapter: {shipped} (used unless --no-adapter; adapter_scope {scope}"
                   + (": generation is the base's)" if scope == "gem" else ")"))
    else:
        click.echo("shipped adapter: none")


def torch_cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


for command in (embed_command, train_command, eval_command, merge_command, stack_command, swap_command,
                inspect_command, export_command, serve_command, pairs_command):
    main.add_command(command)


if __name__ == "__main__":
    main()
