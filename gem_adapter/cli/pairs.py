"""``gem pairs``: supervised pairs from the train splits of the shared benchmark data -> a JSONL file."""

from __future__ import annotations

from pathlib import Path

import click

from .checks import check_output
from .common import library_errors, require

__all__ = ["pairs_command"]


@click.command("pairs")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="The shared data folder (holding sts/, retrieval/, classification/, train/).  [required]")
@click.option("--out", type=click.Path(path_type=Path), help="Where to write the pairs (.jsonl).  [required]")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option("--sources", default="sts,sick,scifact,banking", show_default=True,
              help="Comma-separated: sts (STSBenchmark), sick (SICK), scifact (SciFact), banking (Banking77); "
                   "general domain, from train/<name>/pairs.jsonl: snli, mrpc, coco.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every draw (same seed, same file).")
@click.option("--max-per-source", type=click.IntRange(min=1), default=None,
              help="Keep at most this many pairs of each source (a seeded sample)  [default: all]")
@library_errors
def pairs_command(data_dir, out, force, sources, seed, max_per_source) -> None:
    """Build anchor/positive(/negative) pairs from benchmark *train* splits only (or general-domain pairs).

    Each line: {"anchor", "positive", "negative" (optional), "source", "label" (optional)}.
    Train on them with --set pairs_data=FILE (or pairs_data=DATA_DIR to build them in memory).

    \b
    Examples:
      gem pairs --data-dir ../shared/data --out pairs.jsonl
      gem pairs --data-dir ../shared/data --out sts.jsonl --sources sts,sick --seed 1
      gem pairs --data-dir ../shared/data --out general.jsonl --sources snli,mrpc,coco
    """
    from ..training import build_pairs, count_by_source, train_splits_used, write_pairs
    from ..training.pairs import parse_sources

    data_dir = require(data_dir, "--data-dir")
    out = require(out, "--out")
    parse_sources(sources)  # the validation pass: a bad name fails before any file is read
    target = check_output(out, folder=False, force=force)
    pairs = build_pairs(data_dir, sources=sources, seed=seed, max_per_source=max_per_source)
    count = write_pairs(pairs, target)
    counts = ", ".join(f"{source} {n}" for source, n in count_by_source(pairs).items())
    splits = ", ".join(train_splits_used(pairs)) or "no suite task (general-domain sources only)"
    click.echo(f"wrote {count} pairs to {out} ({counts}); train splits of: {splits}")
