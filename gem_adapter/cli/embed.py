"""``gem embed``: texts from a file, stdin or the command line -> an (n, dim) .npy array."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GEMError
from ..hub import DEFAULT_MODEL
from .checks import (
    check_output,
    read_input_texts,
    read_stdin_texts,
    write_npy_atomically,
)
from .common import adapter_options, chosen_adapter, dtype_option, library_errors, pick_alias, require

__all__ = ["embed_command"]


@click.command("embed")
@click.option("--base", default=DEFAULT_MODEL, show_default=True, help="Model folder, .gguf file, hub id or alias.")
@adapter_options
@click.option("--input", "input_path", type=click.Path(path_type=Path),
              help="Texts: .txt (one per line; row i = line i+1), .jsonl (see --field), or - for stdin lines.")
@click.option("--text", "inline_texts", multiple=True, help="A text to embed (repeatable), instead of --input.")
@click.option("--out", type=click.Path(path_type=Path), help="Where to write the .npy array.  [required]")
@click.option("--output", "output_alias", type=click.Path(path_type=Path), hidden=True)
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--field", default="text", show_default=True, help="JSONL field holding the text.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Texts per forward pass (more: faster, more memory).")
@click.option("--max-length", default=None, type=click.IntRange(min=2),
              help="Tokens per text, template and GEM tokens included; longer texts lose their end  "
                   "[default: the adapter's max_length, 512 without an adapter]")
@click.option("--pooling", type=click.Choice(["gem", "mean", "last"]), default=None,
              help="gem: the GEM tokens; mean / last: the plain decoder's baselines  [default: the adapter's, gem]")
@click.option("--no-normalize", is_flag=True, help="Keep raw vectors instead of unit length.")
@click.option("--dimensions", type=click.IntRange(min=1), default=None,
              help="Keep the first N values of each vector, normalised again (Matryoshka; for adapters trained with "
                   "matryoshka_dims)  [default: all]")
@click.option("--load-in-4bit", is_flag=True, help="Quantise the base to NF4 with bitsandbytes.")
@dtype_option
@click.option("--allow-pickle", is_flag=True,
              help="Accept an adapter_model.bin pickle (only from a source you trust; unpickling runs code).")
@library_errors
def embed_command(base, adapter, no_adapter, input_path, inline_texts, out, output_alias, force, field, batch_size, max_length,
                  pooling, no_normalize, dimensions, load_in_4bit, dtype, allow_pickle) -> None:
    """Embed every text of a file into an (n, dim) float32 .npy array, in file order.

    A .txt file or stdin gives one text per line: only \\n and \\r\\n end a line, blank
    lines are kept as (empty) texts, so row i of the array is line i+1.

    \b
    Examples:
      gem embed --input texts.txt --out emb.npy
      gem embed --input docs.jsonl --field body --out docs.npy --batch-size 64
      gem embed --text "A man is playing a guitar." --text "A person plays the guitar." --out two.npy
      gem embed --adapter runs/mrl --input texts.txt --dimensions 128 --out small.npy
    """
    from ..model import GEMModel

    out = require(pick_alias(out, output_alias, "--out", "--output"), "--out")
    if (input_path is None) == (not inline_texts):
        raise click.UsageError("give either --input FILE or one or more --text, not both and not neither")
    # the validation pass: every input and output is checked before the model loads
    if inline_texts:
        texts = list(inline_texts)
    elif str(input_path) == "-":
        texts = read_stdin_texts(click.get_binary_stream("stdin").read())
    else:
        texts = read_input_texts(input_path, field)
    adapter = chosen_adapter(base, adapter, no_adapter)
    target = check_output(out, folder=False, force=force)

    model = GEMModel.from_pretrained(base, adapter=adapter, load_in_4bit=load_in_4bit, allow_pickle=allow_pickle,
                                     dtype=dtype)
    if dimensions is not None and dimensions > model.embedding_dim:
        raise GEMError(f"--dimensions {dimensions} exceeds this model's embedding size {model.embedding_dim}")
    vectors = model.encode(
        texts, batch_size=batch_size, normalize=not no_normalize, max_length=max_length,
        pooling=pooling, show_progress_bar=len(texts) > batch_size, dimensions=dimensions,
    )
    write_npy_atomically(vectors, target)
    click.echo(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {out}")
    if inline_texts and len(texts) > 1 and not no_normalize:
        click.echo("cosine similarity:")
        similarity = vectors @ vectors.T
        for text, row in zip(texts, similarity):
            click.echo("  " + " ".join(f"{value:6.3f}" for value in row) + f"  {text[:60]}")
