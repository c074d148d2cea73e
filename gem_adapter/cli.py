"""The ``gem`` command line: a thin layer over the library API.

Library errors (``GEMError``) become ``click.ClickException`` here and nowhere else, so
every command fails with one line that names the problem and the fix.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
from pathlib import Path

import click

from . import __version__
from .errors import GEMError
from .hub import DEFAULT_MODEL


def _library_errors(command):
    """Turn library and input errors into one-line CLI errors."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (GEMError, TypeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group()
@click.version_option(__version__, prog_name="gem-adapter")
def main() -> None:
    """GEM: embeddings from a decoder LLM that keeps generating.

    \b
    Examples:
      gem info
      gem embed --input texts.txt --output emb.npy
      gem embed --base ./my-llama --adapter ./gem-adapter --input docs.jsonl --output docs.npy
    """


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Texts from a .txt file (every line is one text, so row i is line i+1) or a .jsonl file."""
    if not path.is_file():
        raise GEMError(f"input file {path} does not exist")
    if path.suffix == ".jsonl":
        from .data import read_jsonl

        return read_jsonl(path, field)
    return path.read_text(encoding="utf-8").splitlines()


def write_npy_atomically(array, output: Path) -> None:
    """Write to a temporary file beside ``output`` and rename, so a failure leaves nothing."""
    import numpy as np

    output.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=output.parent, prefix=f".{output.name}.", suffix=".part", delete=False)
    try:
        with handle:
            np.save(handle, array)
        os.replace(handle.name, output)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


@main.command()
@click.option("--base", default=DEFAULT_MODEL, show_default=True, help="Model folder, .gguf file, hub id or alias.")
@click.option("--adapter", type=click.Path(path_type=Path), help="GEM adapter folder written by `gem train`.")
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="Texts: .txt (one per line), .jsonl (see --field), or - for stdin lines.")
@click.option("--text", "inline_texts", multiple=True, help="A text to embed (repeatable), instead of --input.")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Where to write the .npy array.")
@click.option("--field", default="text", show_default=True, help="JSONL field holding the text.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--max-length", default=None, type=click.IntRange(min=2), help="Tokens per text, GEM tokens included.")
@click.option("--pooling", type=click.Choice(["gem", "mean", "last"]), default=None, help="Default: the adapter's (gem).")
@click.option("--no-normalize", is_flag=True, help="Keep raw vectors instead of unit length.")
@click.option("--load-in-4bit", is_flag=True, help="Quantise the base to NF4 with bitsandbytes.")
@_library_errors
def embed(base, adapter, input_path, inline_texts, output, field, batch_size, max_length, pooling, no_normalize, load_in_4bit) -> None:
    """Embed every text of a file into an (n, dim) float32 .npy array, in file order.

    \b
    Examples:
      gem embed --input texts.txt --output emb.npy
      gem embed --input docs.jsonl --field body --output docs.npy --batch-size 64
      gem embed --text "A man is playing a guitar." --text "A person plays the guitar." --output two.npy
    """
    from .model import GEMModel

    if (input_path is None) == (not inline_texts):
        raise click.UsageError("give either --input FILE or one or more --text, not both and not neither")
    if inline_texts:
        texts = list(inline_texts)
    elif str(input_path) == "-":
        texts = click.get_text_stream("stdin").read().splitlines()
    else:
        texts = read_texts(input_path, field)
    model = GEMModel.from_pretrained(base, adapter=adapter, load_in_4bit=load_in_4bit)
    vectors = model.encode(
        texts, batch_size=batch_size, normalize=not no_normalize, max_length=max_length,
        pooling=pooling, show_progress_bar=True,
    )
    write_npy_atomically(vectors, output)
    click.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {output}")
    if inline_texts and len(texts) > 1 and not no_normalize:
        click.echo("cosine similarity:")
        similarity = vectors @ vectors.T
        for text, row in zip(texts, similarity):
            click.echo("  " + " ".join(f"{value:6.3f}" for value in row) + f"  {text[:60]}")


@main.command()
@click.option("--recipe", default="smollm2-135m-cpu", show_default=True, help="Recipe name in recipes/ or a YAML path.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--data", type=click.Path(path_type=Path), help="Training text (overrides the recipe's data).")
@click.option("--base", default=None, help="Base model (overrides the recipe's base_model).")
@click.option("--output", type=click.Path(path_type=Path), help="Output folder (overrides the recipe's output_dir).")
@click.option("--resume", is_flag=True, help="Continue from the last complete checkpoint in the output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@_library_errors
def train(recipe, overrides, data, base, output, resume, overwrite) -> None:
    """Train a GEM adapter (LoRA + GEM-token rows) with the mixed NTP objective.

    \b
    Examples:
      gem train                                           # default CPU recipe, SmolLM2-135M
      gem train --recipe llama-3.2-1b-qlora --data corpus.jsonl --output runs/llama
      gem train --set max_steps=50 --set contrastive_weight=0 --output runs/paper
      gem train --output runs/paper --resume
    """
    from .recipes import load_recipe, parse_overrides
    from .train import train as run_training

    values = parse_overrides(overrides)
    if data is not None:
        values["data"] = str(data.resolve())
    if base is not None:
        values["base_model"] = base
    if output is not None:
        values["output_dir"] = str(output)
    if resume and overwrite:
        raise click.UsageError("--resume and --overwrite contradict each other; pick one")
    config = load_recipe(recipe, values)
    folder = run_training(config, resume=resume, overwrite=overwrite)
    click.echo(f"adapter written to {folder}  (use: gem embed --base {config.base_model} --adapter {folder} ...)")


@main.command()
def info() -> None:
    """Print versions, the cache location and whether the default model is ready."""
    import importlib.metadata as metadata

    from .hub import alias_status, cache_dir

    click.echo(f"gem-adapter {__version__} (python {sys.version.split()[0]})")
    for package in ("torch", "transformers", "peft", "trl", "bitsandbytes", "mteb", "sentence-transformers"):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        click.echo(f"{package}: {version}")
    click.echo(f"cache: {cache_dir()}")
    click.echo(f"default model {alias_status(DEFAULT_MODEL)}")


def _register_commands() -> None:
    from .adapter_commands import ADAPTER_COMMANDS
    from .evaluation.command import eval_command

    main.add_command(eval_command, "eval")
    for command in ADAPTER_COMMANDS:
        main.add_command(command)


_register_commands()


if __name__ == "__main__":
    main()
