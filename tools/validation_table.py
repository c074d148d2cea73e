"""One validation table from several runs: ``gem eval --suite validation`` summaries and recipe ablations.

    python tools/validation_table.py --eval runs/diag/val-shipped/summary.json \\
        --ablation runs/diag/ablation/ablation.json --out tools/results/cpu-2core/validation-diagnosis

Every row is one model's scores on the validation suite at the same (quick) sizes, taken from
the files as they are (nothing is re-scored). Rows of a ``gem eval`` summary keep their display
names (the GEM row is renamed ``--gem-label``); an ablation's rows are its variants. Columns: the
ten tasks, then the **validation-set average** over the eight tasks of the seven validation sets
(the same tasks for every row, so rows compare), the similarity average (STSB, SICK-R; marked
``*`` where the row's recipe trained on them), the row's own OOD average (its in-domain tasks left
out, as ``gem eval`` reports it), and how many of the eight tasks the row beats PromptEOL on
(``--reference``, a row name). Writes ``<out>.md`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS = ("AmazonCounterfactualClassification", "TweetEvalClassification", "CustomerReviewsClassification",
         "TwitterURLCorpus", "WikiQAReranking", "TrecQAReranking", "NFCorpusOriginal", "CustomerReviewsClustering")
SIMILARITY = ("STSBenchmark", "SICK-R")
SHORT = {"AmazonCounterfactualClassification": "AmazonCF", "TweetEvalClassification": "TweetEval",
         "CustomerReviewsClassification": "CR", "TwitterURLCorpus": "TwitterURL", "WikiQAReranking": "WikiQA",
         "TrecQAReranking": "TrecQA", "NFCorpusOriginal": "NFCorpus", "CustomerReviewsClustering": "CR clust",
         "STSBenchmark": "STSB", "SICK-R": "SICK-R"}


def eval_rows(path: Path, gem_label: str | None) -> list[dict]:
    """The rows of a ``gem eval --suite validation`` summary.json."""
    summary = json.loads(path.read_text())
    if summary.get("suite") != "validation":
        raise SystemExit(f"{path} is a {summary.get('suite')!r} run; give a validation run at quick sizes")
    rows = []
    for model in summary["models"]:
        name = gem_label if model["id"] == "gem" and gem_label else model["display"]
        in_domain = summary.get("in_domain_tasks", []) if model["id"] == "gem" else []
        rows.append({"name": name, "source": str(path), "scores": model["mteb"], "in_domain": list(in_domain)})
    return rows


def ablation_rows(path: Path) -> list[dict]:
    """The variants of a ``recipe_ablation.py --scores validation`` ablation.json."""
    table = json.loads(path.read_text())
    rows = []
    for row in table["rows"]:
        if "validation" not in row:
            continue
        overrides = ";".join(row.get("overrides") or [])
        rows.append({"name": row["variant"], "source": str(path),
                     "recipe": row["recipe"] + (f" ({overrides})" if overrides else ""),
                     "scores": row["validation"], "in_domain": list(row.get("validation_in_domain") or []),
                     "train_seconds": row.get("train_seconds"), "machine": row.get("machine", table.get("machine"))})
    return rows


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def complete(rows: list[dict], reference: str | None) -> list[dict]:
    """Add the common averages and the count of tasks won against the reference row."""
    ref = next((row for row in rows if row["name"] == reference), None)
    if reference and ref is None:
        raise SystemExit(f"no row named {reference!r}; rows: {', '.join(row['name'] for row in rows)}")
    for row in rows:
        missing = [task for task in TASKS + SIMILARITY if task not in row["scores"]]
        if missing:
            raise SystemExit(f"row {row['name']} ({row['source']}) lacks {', '.join(missing)}")
        row["validation_sets_average"] = round(mean([row["scores"][t] for t in TASKS]), 2)
        row["similarity_average"] = round(mean([row["scores"][t] for t in SIMILARITY]), 2)
        # recomputed for every row alike: a gem eval run marks its baselines with the adapter's in-domain tasks
        row["ood_average"] = round(mean([row["scores"][t] for t in TASKS + SIMILARITY if t not in row["in_domain"]]), 2)
        if ref is not None and row is not ref:
            row["wins_vs_reference"] = sum(row["scores"][t] > ref["scores"][t] for t in TASKS)
    return rows


def markdown(rows: list[dict], reference: str | None) -> str:
    head = [SHORT[t] for t in TASKS + SIMILARITY]
    lines = ["| row | " + " | ".join(head) + " | val. sets avg (8) | similarity | row's OOD avg | "
             f"tasks > {reference or '-'} (of 8) |",
             "|---|" + "---:|" * (len(head) + 4)]
    for row in rows:
        cells = []
        for task in TASKS + SIMILARITY:
            star = "*" if task in row["in_domain"] else ""
            cells.append(f"{row['scores'][task]:.1f}{star}")
        similarity = f"{row['similarity_average']:.1f}" + ("*" if set(SIMILARITY) & set(row["in_domain"]) else "")
        ood = f"{row['ood_average']:.1f}"
        wins = str(row["wins_vs_reference"]) if "wins_vs_reference" in row else "-"
        lines.append(f"| {row['name']} | " + " | ".join(cells) +
                     f" | **{row['validation_sets_average']:.1f}** | {similarity} | {ood} | {wins} |")
    notes = ["", ("Scores x100 (metrics as in `gem eval`'s report). `*`: the row's recipe trained on that task's train "
             "split (in-domain), so it is left out of the row's OOD average (the mean of its other tasks). val. sets avg (8): the mean over the "
             "eight tasks of the seven validation sets, the same for every row."), "", "Rows:"]
    for row in rows:
        trained = ""
        if row.get("train_seconds"):
            trained = f"trained {row['train_seconds']:.0f} s" + (f" on {row['machine']}" if row.get("machine") else "") + ", "
        notes.append(f"- **{row['name']}**: " + (f"recipe `{row['recipe']}`, " if "recipe" in row else "")
                     + trained + f"from `{row['source']}`")
    return "\n".join(lines + notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", action="append", default=[], type=Path, help="a validation run's summary.json")
    parser.add_argument("--ablation", action="append", default=[], type=Path, help="a recipe ablation's ablation.json")
    parser.add_argument("--gem-label", default="shipped GEM adapter", help="name of the GEM row of --eval runs")
    parser.add_argument("--reference", default="smollm2-135m PromptEOL", help="row to count wins against")
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    args = parser.parse_args()
    rows = [row for path in args.eval for row in eval_rows(path, args.gem_label)]
    rows += [row for path in args.ablation for row in ablation_rows(path)]
    if not rows:
        raise SystemExit("no rows: give --eval and/or --ablation files")
    rows = complete(rows, args.reference)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"rows": rows, "reference": args.reference}, indent=2) + "\n")
    text = markdown(rows, args.reference)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
