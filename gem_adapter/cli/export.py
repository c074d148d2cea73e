"""``gem export``: a thin click layer over ``adapters.export``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .checks import check_output
from .common import SHIPPED_ADAPTER_HELP, given_or_shipped_adapter, library_errors


@click.command("export")
@click.option("--base", default=None,
              help="Base model (folder, .gguf, hub id, alias).  [default: the adapter's recorded base]")
@click.option("--adapter", default=None, type=click.Path(path_type=Path), help=SHIPPED_ADAPTER_HELP + "; k = 1 GEM token")
@click.option("--format", "export_format", required=True,
              type=click.Choice(["sentence-transformers", "vllm", "gguf"]), help="The engine that will load the export.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write the export to.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Dtype of the saved weights (merging is float32).")
@click.option("--converter", type=click.Path(path_type=Path), default=None,
              help="gguf only: llama.cpp's convert_hf_to_gguf.py (default: $GEM_LLAMA_CPP_CONVERTER, else the copy in "
                   "llama-cpp-python's source distribution, fetched once into the cache).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--allow-pickle", is_flag=True, help="Accept an adapter_model.bin pickle (only from a source you trust).")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@library_errors
def export_command(base, adapter, export_format, out, dtype, converter, force, allow_pickle, as_json) -> None:
    """Export a GEM adapter for an engine fed plain text (sentence-transformers, vLLM or llama.cpp).

    The export's tokenizer adds the adapter's template and GEM token itself, so the engine's
    last-token pooling gives GEMModel.encode's embedding; the same weights generate as the
    base does (with the generation tokenizer). k > 1 adapters cannot be served this way.

    \b
    Examples:
      gem export --base smollm2-135m --format vllm --out export/vllm   # the adapter shipped for it
      gem export --adapter runs/gem --format sentence-transformers --out export/st
      gem export --adapter runs/gem --format vllm --out export/vllm
      gem export --adapter runs/gem-notemplate --format gguf --out export/gguf
    """
    from ..adapters import export

    adapter = given_or_shipped_adapter(base, adapter)
    target = check_output(out, folder=True, force=force)
    report = export(base, adapter, target, export_format, dtype=dtype, force=force, allow_pickle=allow_pickle,
                    converter=converter)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    for line in report.lines():
        click.echo(line)
