"""``gem train``: a recipe (plus ``--set`` overrides) -> a trained GEM adapter folder."""

from __future__ import annotations

from pathlib import Path

import click

from .common import library_errors


@click.command("train")
@click.option("--recipe", default="smollm2-135m-cpu", show_default=True, help="Recipe name in recipes/ or a YAML path.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--data", type=click.Path(path_type=Path), help="Training text (overrides the recipe's data).")
@click.option("--base", default=None, help="Base model (overrides the recipe's base_model).")
@click.option("--output", type=click.Path(path_type=Path), help="Output folder (overrides the recipe's output_dir).")
@click.option("--resume", is_flag=True, help="Continue from the last complete checkpoint in the output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@library_errors
def train_command(recipe, overrides, data, base, output, resume, overwrite) -> None:
    """Train a GEM adapter (LoRA + GEM-token rows) with the mixed NTP objective.

    \b
    Examples:
      gem train                                           # default CPU recipe, SmolLM2-135M
      gem train --recipe llama-3.2-1b-qlora --data corpus.jsonl --output runs/llama
      gem train --set max_steps=50 --set contrastive_weight=0 --output runs/paper
      gem train --output runs/paper --resume
    """
    from ..training import load_recipe, parse_overrides
    from ..training import train as run_training

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
