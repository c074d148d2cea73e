"""``gem train``: a recipe (plus ``--set`` overrides) -> a trained GEM adapter folder."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import GEMError
from .checks import check_output, check_utf8_file
from .common import library_errors, pick_alias


def recipe_summaries() -> list[tuple[str, str]]:
    """(name, first comment line) of every recipe in ``RECIPE_DIR``, by name."""
    from ..training import RECIPE_DIR

    found = []
    for path in sorted(RECIPE_DIR.glob("*.yaml")) if RECIPE_DIR.is_dir() else []:
        try:
            first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        except (OSError, UnicodeDecodeError):
            first = ""
        found.append((path.stem, first.lstrip("#").strip() if first.startswith("#") else ""))
    return found


class _TrainCommand(click.Command):
    """``gem train`` whose help ends with the recipes found in recipes/ when it is shown."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        recipes = recipe_summaries()
        with formatter.section("Recipes (--recipe NAME)"):
            if recipes:
                formatter.write_dl(recipes)
            else:
                formatter.write_text("none found; pass --recipe PATH.yaml")
        super().format_epilog(ctx, formatter)


def _jsonl_files(data: Path) -> list[Path]:
    if data.is_dir():
        return sorted(p for p in data.rglob("*.jsonl") if p.is_file())
    return [data] if data.suffix == ".jsonl" else []


@click.command("train", cls=_TrainCommand)
@click.option("--recipe", default="smollm2-135m-general", show_default=True,
              help="Recipe name (listed below) or a YAML path.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (repeatable), e.g. --set max_steps=50.")
@click.option("--data", type=click.Path(path_type=Path),
              help="Training text: .txt, .jsonl, NLTK .zip or a folder  [default: the recipe's data]")
@click.option("--base", default=None, help="Base model  [default: the recipe's base_model]")
@click.option("--out", type=click.Path(path_type=Path), help="Output (adapter) folder  [default: the recipe's output_dir]")
@click.option("--output", "output_alias", type=click.Path(path_type=Path), hidden=True)
@click.option("--resume", is_flag=True, help="Continue from the last complete checkpoint in the --out folder.")
@click.option("--force", is_flag=True, help="Replace an existing, non-empty --out folder.")
@click.option("--overwrite", "overwrite_alias", is_flag=True, hidden=True)
@library_errors
def train_command(recipe, overrides, data, base, out, output_alias, resume, force, overwrite_alias) -> None:
    """Train a GEM adapter (LoRA + GEM-token rows) with the mixed NTP objective.

    \b
    Examples:
      gem train                                           # default CPU recipe, SmolLM2-135M
      gem train --recipe llama-3.2-1b-qlora --data corpus.jsonl --out runs/llama
      gem train --recipe smollm2-135m-paper --set max_steps=50 --out runs/paper
      gem train --recipe smollm2-135m-paper --out runs/paper --resume
    """
    from ..training import load_recipe, parse_overrides
    from ..training import train as run_training
    from ..training.pairs import require_pairs_location

    out = pick_alias(out, output_alias, "--out", "--output")
    force = pick_alias(force, overwrite_alias, "--force", "--overwrite")
    if resume and force:
        raise click.UsageError("--resume and --force contradict each other; pick one")
    values = parse_overrides(overrides)
    if data is not None:
        values["data"] = str(data.resolve())
    if base is not None:
        values["base_model"] = base
    if out is not None:
        values["output_dir"] = str(out)
    config = load_recipe(recipe, values)

    # the validation pass, before any model or tokenizer loads
    output_dir = Path(config.output_dir)
    if resume:
        if not output_dir.is_dir():
            raise GEMError(f"--resume: output folder {output_dir} does not exist; nothing to resume")
        config.output_dir = str(check_output(output_dir, folder=True, force=True))
    else:
        config.output_dir = str(check_output(output_dir, folder=True, force=force,
                                             force_hint="pass --force to replace it, --resume to continue it"))
    if config.data:
        corpus = Path(config.data)
        if not corpus.exists():
            raise GEMError(f"training data {corpus} does not exist; pass --data with a .txt, .jsonl, .zip or folder")
        for path in _jsonl_files(corpus):
            check_utf8_file(path, "training data")
    if config.pairs_data:
        require_pairs_location(config.pairs_data)

    folder = run_training(config, resume=resume, overwrite=force)
    click.echo(f"adapter written to {folder}  (use: gem embed --base {config.base_model} --adapter {folder} ...)")
