"""``gem merge``, ``gem stack``, ``gem swap`` and ``gem inspect``: thin click layers over ``adapters``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import GEMError
from .checks import check_output
from .common import SHIPPED_ADAPTER_HELP, given_or_shipped_adapter, library_errors

_DTYPES = click.Choice(["float32", "bfloat16", "float16"])
_METHODS = click.Choice(["linear", "cat", "svd", "ties", "dare_ties", "dare_linear"])


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


@click.command("merge")
@click.option("--base", default=None,
              help="Base model (folder, .gguf, hub id, alias)  [default: the adapter's recorded base]")
@click.option("--adapter", default=None, type=click.Path(path_type=Path), help=SHIPPED_ADAPTER_HELP)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the merged checkpoint.")
@click.option("--dtype", type=_DTYPES, default="float32", show_default=True, help="Dtype of the saved weights (merging is float32).")
@click.option("--force", is_flag=True, help="Replace an existing, non-empty --out folder.")
@click.option("--allow-pickle", is_flag=True, help="Accept an adapter_model.bin pickle (only from a source you trust).")
@click.option("--json", "as_json", is_flag=True, help="Print the merge report as JSON.")
@library_errors
def merge_command(base, adapter, out, dtype, force, allow_pickle, as_json) -> None:
    """Fold a GEM adapter (LoRA + GEM rows) into a standalone checkpoint.

    The base is loaded in full precision even for an adapter trained on a 4-bit base.
    The result loads with AutoModelForCausalLM and GEMModel; with k = 1 any last-token
    pooler on TEXT + "<|gem_0|>" gives the GEM embedding. An adapter of adapter_scope gem
    (k = 1) keeps its LoRA apart as a PEFT activated LoRA invoked by the GEM token
    (OUT/alora, loaded with PeftModel.from_pretrained), so plain text runs the base.

    \b
    Examples:
      gem merge --base smollm2-135m --out merged/          # the adapter shipped for it
      gem merge --base smollm2-135m --adapter runs/gem --out merged/
      gem merge --adapter runs/llama --out merged-llama --dtype bfloat16
    """
    from ..adapters import merge

    adapter = given_or_shipped_adapter(base, adapter)
    target = check_output(out, folder=True, force=force)
    report = merge(base, adapter, target, dtype=dtype, force=force, allow_pickle=allow_pickle)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _echo_lines(report.lines())


@click.command("stack")
@click.option("--base", required=True, help="Base model the adapters were trained on.")
@click.option("--adapter", "adapters", multiple=True, required=True, metavar="NAME=FOLDER",
              help="An adapter to combine (repeat; at least two, one of them a GEM adapter).")
@click.option("--weights", default=None, help="Comma-separated weights, one per --adapter  [default: 1 for each]")
@click.option("--method", type=_METHODS, default="linear", show_default=True, help="PEFT combination type.")
@click.option("--density", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Kept fraction for ties / dare_*  [default: 0.5]")
@click.option("--svd-rank", type=click.IntRange(min=1), default=None, help="Rank of the svd result  [default: the largest input rank]")
@click.option("--gem-rows-from", default=None, help="Which GEM adapter's GEM rows to keep, if several (a NAME of --adapter).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of dare_* random pruning.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the combined adapter.")
@click.option("--force", is_flag=True, help="Replace an existing, non-empty --out folder.")
@click.option("--allow-pickle", is_flag=True, help="Accept adapter_model.bin pickles (only from sources you trust).")
@library_errors
def stack_command(base, adapters, weights, method, density, svd_rank, gem_rows_from, seed, out, force, allow_pickle) -> None:
    """Combine a GEM adapter with other LoRAs into one GEM adapter (GEM rows kept).

    \b
    Examples:
      gem stack --base ./llama --adapter gem=runs/gem --adapter style=./style-lora --out stacked
      gem stack --base ./llama --adapter gem=runs/gem --adapter code=./code-lora --weights 1,0.5 --method cat --out s2
    """
    from ..adapters import parse_weights, stack

    named = {}
    for item in adapters:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise click.UsageError(f"--adapter {item!r} must be NAME=FOLDER, e.g. --adapter gem=runs/gem")
        if name in named:
            raise click.UsageError(f"adapter name {name!r} is given twice; names must differ")
        named[name] = Path(folder)
    target = check_output(out, folder=True, force=force)
    report = stack(base, named, target, weights=parse_weights(weights, len(named)), method=method, force=force,
                   allow_pickle=allow_pickle, density=density, svd_rank=svd_rank, gem_rows_from=gem_rows_from, seed=seed)
    _echo_lines(report.lines())


@click.command("swap")
@click.option("--base", required=True, help="The new base: same architecture and vocabulary as the adapter's.")
@click.option("--adapter", required=True, type=click.Path(path_type=Path), help="GEM adapter trained on another checkpoint.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the re-targeted adapter.")
@click.option("--merge", "merge_model", is_flag=True, help="Also write a merged checkpoint (where: see --merged-out).")
@click.option("--merged-out", type=click.Path(path_type=Path), default=None, help="Merged checkpoint folder (implies --merge)  [default: OUT-merged]")
@click.option("--dtype", type=_DTYPES, default="float32", show_default=True, help="Dtype of the merged weights.")
@click.option("--force", is_flag=True, help="Replace existing, non-empty output folders (--out and --merged-out).")
@click.option("--allow-pickle", is_flag=True, help="Accept an adapter_model.bin pickle (re-saved as safetensors).")
@library_errors
def swap_command(base, adapter, out, merge_model, merged_out, dtype, force, allow_pickle) -> None:
    """Re-target a GEM adapter to a sibling checkpoint (e.g. base -> instruct).

    \b
    Examples:
      gem swap --base ./llama-instruct --adapter runs/llama-base-gem --out runs/llama-instruct-gem
      gem swap --base ./llama-instruct --adapter runs/llama-base-gem --out runs/li-gem --merge
    """
    from ..adapters import swap

    if merged_out is not None:
        merge_model = True
    target = check_output(out, folder=True, force=force)
    if merge_model:
        merged_target = check_output(merged_out if merged_out is not None else Path(f"{out}-merged"), folder=True,
                                     force=force, option="--merged-out")
        merged_out = merged_target if merged_out is not None else None
    report = swap(base, adapter, target, merge_model=merge_model, merged_out=merged_out, dtype=dtype,
                  force=force, allow_pickle=allow_pickle)
    _echo_lines(report.lines())


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of key: value lines.")
@click.option("--allow-pickle", is_flag=True,
              help="Read an adapter_model.bin pickle (only from a source you trust; unpickling runs code).")
@library_errors
def inspect_command(path, as_json, allow_pickle) -> None:
    """Say what PATH is: GEM adapter, plain LoRA or merged GEM checkpoint, and its settings.

    \b
    Examples:
      gem inspect runs/gem
      gem inspect merged/ --json
    """
    from ..adapters import format_inspection, inspect

    if path.exists() and not path.is_dir():
        raise GEMError(f"{path} is a file, not a folder; point at an adapter or merged checkpoint folder")
    info = inspect(path, allow_pickle=allow_pickle)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else format_inspection(info))

