"""``gem eval``: the click command over ``evaluation.run_evaluation``.

A thin layer: it checks the output folder, parses options, calls ``run_evaluation`` and
prints where the report is. Errors become one line (``common.library_errors``).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..hub import DEFAULT_MODEL
from .checks import check_output
from .common import adapter_options, chosen_adapter, dtype_option, library_errors, pick_alias

# the names `gem eval --help` lists; tests/test_cli_errors.py checks them against the library's
TASK_NAMES = ("STSBenchmark", "SICK-R", "Banking77Classification", "Banking77Clustering", "SciFact", "MMLU",
              "ARC-Easy", "HellaSwag", "WikiText-2", "AmazonCounterfactualClassification", "TweetEvalClassification",
              "CustomerReviewsClassification", "TwitterURLCorpus", "WikiQAReranking", "TrecQAReranking",
              "NFCorpusOriginal", "CustomerReviewsClustering")
SUITE_NAMES = ("quick", "full", "validation", "validation-full")
BASELINE_NAMES = ("mean", "last", "prompteol", "minilm")


def _names(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


@click.command("eval")
@click.option("--base", default=DEFAULT_MODEL, show_default=True,
              help="Base model: alias, folder, .gguf or hub id.")
@adapter_options
@click.option("--suite", type=click.Choice(SUITE_NAMES), default="quick", show_default=True,
              help="quick: seeded subsets stated in the report (sized for <= 15 min with smollm2-135m "
                   "on 2 CPU cores); full: every embedding task whole, MMLU 1,400 questions stratified by "
                   "subject, HellaSwag 1,000, ARC-Easy and WikiText-2 whole (hours on 2 CPU cores); "
                   "validation: seven sets no recipe trains on, plus STSB and SICK-R, as seeded subsets "
                   "(about 5 min a row with smollm2-135m on 2 CPU cores), reported with their OOD average and "
                   "family averages; validation-full: the same, every test item (about 25 min a decoder row).")
@click.option("--tasks", default=None, metavar="LIST",
              help="Comma-separated task names of the suite, from the list above  [default: all of the suite's]")
@click.option("--baselines", default=None, metavar="LIST",
              help="Comma-separated baselines from the list above; the GEM row always runs  [default: all]")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output folder for results/, summary.json, report.md, report.png.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Offline benchmark copies  [default: $GEM_DATA, else <repo>/../shared/data]")
@click.option("--force", is_flag=True,
              help="Replace the run in an existing, non-empty --out folder (its results/ and embedding cache go).")
@click.option("--resume", is_flag=True,
              help="Continue the stopped run in --out: same arguments; finished rows and LM tasks and every "
                   "embedding already made are kept.")
@click.option("--baselines-from", type=click.Path(path_type=Path, file_okay=False), default=None, metavar="RUN",
              help="Start with the baseline rows and base-decoder LM metrics an earlier run (its --out folder) "
                   "finished; they do not depend on the adapter. Its base, suite, tasks, seed, data and dtype "
                   "must match.")
@click.option("--overwrite", "overwrite_alias", is_flag=True, hidden=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subsets.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Embedding batch size.")
@click.option("--allow-pickle", is_flag=True,
              help="Accept an adapter_model.bin pickle (only from a source you trust; unpickling runs code).")
@dtype_option
@click.option("--limit", type=click.IntRange(min=1), default=None, hidden=True,
              help="Cap every task at this many items (smoke tests).")
@library_errors
def eval_command(base, adapter, no_adapter, suite, tasks, baselines, out_dir, data_dir, force, resume, baselines_from,
                 overwrite_alias, seed, batch_size, allow_pickle, dtype, limit) -> None:
    """Compare GEM with the decoder baselines and MiniLM on MTEB tasks and LM metrics.

    \b
    Tasks (--tasks) of the quick and full suites:
      embedding: STSBenchmark, SICK-R, Banking77Classification, Banking77Clustering, SciFact
      language model: MMLU, ARC-Easy, HellaSwag, WikiText-2
    Tasks of the validation suites (never trained on; STSB and SICK-R out-of-domain
    only for an adapter whose train_splits_used leaves them out):
      classification: AmazonCounterfactualClassification, TweetEvalClassification,
        CustomerReviewsClassification
      pair classification: TwitterURLCorpus
      reranking: WikiQAReranking, TrecQAReranking
      retrieval: NFCorpusOriginal
      clustering: CustomerReviewsClustering
      similarity: STSBenchmark, SICK-R
    Baselines (--baselines): mean, last, prompteol, minilm

    \b
    Examples:
      gem eval --out runs/eval-quick
      gem eval --adapter runs/gem-adapter --suite full --out runs/eval-full
      gem eval --adapter runs/gem-adapter --suite full --out runs/eval-full --resume
      gem eval --adapter runs/new-adapter --suite full --out runs/eval-new --baselines-from runs/eval-full
      gem eval --tasks STSBenchmark,MMLU --baselines mean,minilm --out runs/eval-sts
      gem eval --adapter runs/new-adapter --suite validation --out runs/val-new
    """
    from ..evaluation import family_table_rows, run_evaluation, table_rows

    force = pick_alias(force, overwrite_alias, "--force", "--overwrite")
    if resume and force:
        raise click.UsageError("--resume and --force contradict each other; pick one")
    # the validation pass: the output folder and the adapter, before any model loads
    target = check_output(out_dir, folder=True, force=force or resume,
                          force_hint="pass --force to replace its run, --resume to continue it")
    adapter = chosen_adapter(base, adapter, no_adapter)
    if resume and (target / "run.json").is_file():
        from ..evaluation.runner import describe_progress

        click.echo(describe_progress(target), err=True)
    try:
        summary = run_evaluation(
            base=base, adapter=adapter, suite=suite, tasks=_names(tasks), baselines=_names(baselines),
            out_dir=target, data_dir=data_dir, seed=seed, batch_size=batch_size, limit=limit, overwrite=force,
            resume=resume, baselines_from=baselines_from, allow_pickle=allow_pickle, dtype=dtype,
        )
    except KeyboardInterrupt:
        click.echo(f"stopped; what is finished stays in {out_dir}: run the same command with --resume to continue",
                   err=True)
        raise click.exceptions.Exit(130) from None
    tables = [table_rows(summary)] + ([family_table_rows(summary)] if summary.get("out_of_domain") else [])
    for index, (header, rows) in enumerate(tables):
        if index:
            click.echo("")
        click.echo(" | ".join(header))
        for cells in rows:
            click.echo(" | ".join(cells))
    click.echo(f"wrote {out_dir / 'report.md'}, {out_dir / 'report.png'} and {out_dir / 'summary.json'} "
               f"in {summary['wall_time_s']:.0f} s")
