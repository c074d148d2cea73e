"""``gem embed``: texts from a file, stdin or the command line -> an (n, dim) .npy array."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from ..errors import GEMError
from ..hub import DEFAULT_MODEL
from .common import library_errors


def read_texts(path: Path, field: str = "text") -> list[str]:
    """Texts from a .txt file (every line is one text, so row i is line i+1) or a .jsonl file."""
    if not path.is_file():
        raise GEMError(f"input file {path} does not exist")
    if path.suffix == ".jsonl":
        from ..training import read_jsonl

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


@click.command("embed")
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
@library_errors
def embed_command(base, adapter, input_path, inline_texts, output, field, batch_size, max_length, pooling, no_normalize, load_in_4bit) -> None:
    """Embed every text of a file into an (n, dim) float32 .npy array, in file order.

    \b
    Examples:
      gem embed --input texts.txt --output emb.npy
      gem embed --input docs.jsonl --field body --output docs.npy --batch-size 64
      gem embed --text "A man is playing a guitar." --text "A person plays the guitar." --output two.npy
    """
    from ..model import GEMModel

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
