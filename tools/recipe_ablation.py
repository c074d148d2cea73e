"""Recipe variants side by side: train each, score each on dev splits, in one run.

    python tools/recipe_ablation.py --variant default=smollm2-135m-cpu \\
        --variant pairs=smollm2-135m-cpu:pairs_data=DATA \\
        --variant paper=smollm2-135m-paper --out runs/ablation
    python tools/recipe_ablation.py --score shipped=gem_adapter/shipped/smollm2-135m --score bare=none

A variant is ``label=recipe[:key=value;key=value]``; the word ``DATA`` in a value is the shared
data folder. Every adapter is scored in float32 on STSBenchmark **dev** (1,500 pairs) and SICK
**trial** (500 pairs; SICK-R's dev split), Spearman x100 of the cosine; on Banking77's dev
split (616 train texts, 8 per intent, that no pair uses; ``pairs.banking_dev``): classification
accuracy of a logistic regression fitted on 4 texts per intent and scored on the other 4, and
clustering V-measure (k-means, k = 77, mean of 5 seeds), both x100; and WikiText-2 test
perplexity (first ``--wikitext-tokens`` tokens). Dev splits only: the test splits are for
``gem eval``. Writes ``ablation.json`` and ``ablation.md`` into ``--out``.

``--scores validation`` scores each adapter on the out-of-domain validation suite instead
(``gem eval --suite validation``'s quick sizes, ``ValidationScorer``, float32): every task, the
family averages and the out-of-domain average, the adapter's own train splits left out of it.
That is what recipes are chosen by; ``--scores dev,validation`` gives both.

    python tools/recipe_ablation.py --scores validation --variant selfsup=smollm2-135m-selfsup \
        --variant general=smollm2-135m-general --out runs/diagnosis
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_training import DATA, spearman_x100, sts_dev

from gem_adapter import GEMModel
from gem_adapter.evaluation.lm import evaluate_wikitext2
from gem_adapter.precision import describe_cpu
from gem_adapter.training.pairs import banking_dev
from gem_adapter.training.recipes import load_recipe, parse_overrides
from gem_adapter.training.run import train


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{describe_cpu()}, {gpu}, torch {torch.__version__}"


def sick_trial() -> tuple[list[str], list[str], np.ndarray]:
    with open(DATA / "sts" / "sickr" / "SICK_trial.txt", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return ([r["sentence_A"] for r in rows], [r["sentence_B"] for r in rows],
            np.array([float(r["relatedness_score"]) for r in rows]))


def parse_variant(spec: str) -> tuple[str, str, list[str]]:
    """``label=recipe:k=v;k=v`` -> (label, recipe, ["k=v", ...]) with DATA replaced."""
    label, _, rest = spec.partition("=")
    recipe, _, sets = rest.partition(":")
    return label, recipe, [s.replace("DATA", str(DATA)) for s in sets.split(";") if s]


def train_and_score(base: str, recipe: str, folder: Path, overrides: list[str], scores: Callable[[Path], dict]) -> dict:
    """Train ``recipe`` with ``overrides`` into ``folder`` (kept when finished); its scores and training time."""
    values = {"base_model": base, "data": str(DATA / "corpus"), "output_dir": str(folder), "report_to": "none",
              **parse_overrides(overrides)}
    config = load_recipe(recipe, values)
    summary = folder / "train_summary.json"
    if summary.is_file():  # trained by an earlier call: score it again, do not train it again
        seconds = json.loads(summary.read_text()).get("train_runtime_s", "")
    else:
        start = time.perf_counter()
        train(config, overwrite=True)
        seconds = round(time.perf_counter() - start, 1)
    return {"train_seconds": seconds, **scores(folder)}


def validation_scores(base: str, adapter: Path | None, scorer) -> dict:
    """``adapter``'s validation scores (float32): every task, the family averages and the OOD average."""
    from gem_adapter.evaluation.runner import train_splits_used
    from gem_adapter.evaluation.validation import in_domain_tasks

    used = train_splits_used(adapter) if adapter is not None else None
    scorer.in_domain, _ = in_domain_tasks(scorer.tasks, used, has_adapter=adapter is not None)
    model = GEMModel.from_pretrained(base, adapter=adapter, dtype="float32")
    start = time.perf_counter()
    outcome = scorer(model)
    return {"validation": {task: round(value, 2) for task, value in outcome["scores"].items()},
            "validation_families": {family: round(value, 2) for family, value in outcome["family_averages"].items()},
            "validation_ood": round(outcome["ood_average"], 2) if outcome["ood_average"] is not None else None,
            "validation_in_domain": outcome["in_domain_tasks"],
            "validation_seconds": round(time.perf_counter() - start, 1)}


def dev_scores(base: str, adapter: Path | None, wikitext_tokens: int, sts_pairs: int | None = None) -> dict:
    """STSB dev and SICK trial Spearman x100 and WikiText-2 perplexity of ``adapter`` (None: the
    bare base's untrained GEM token), in float32."""
    model = GEMModel.from_pretrained(base, adapter=adapter, dtype="float32")
    row = {}
    left, right, gold = (part[:sts_pairs] for part in sts_dev())
    row["sts_dev"] = spearman_x100(model, left, right, gold)
    left, right, gold = (part[:sts_pairs] for part in sick_trial())
    row["sick_trial"] = spearman_x100(model, left, right, gold)
    row.update(banking_dev_scores(model))
    if wikitext_tokens:
        ppl = evaluate_wikitext2(model, DATA, max_tokens=wikitext_tokens, show_progress=False)
        row["wikitext2_ppl"] = round(ppl["perplexity"], 3)
    return row


def banking_dev_scores(model: GEMModel) -> dict[str, float]:
    """Banking77 dev classification accuracy and clustering V-measure, x100 (module docstring)."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import v_measure_score

    dev = banking_dev(DATA)
    texts, labels = [t for t, _ in dev], np.array([label for _, label in dev])
    vectors = model.encode(texts, batch_size=64, show_progress_bar=False)
    rank = np.zeros(len(dev), dtype=int)  # a text's place among its intent's dev texts
    for label in set(labels):
        rank[labels == label] = np.arange(int((labels == label).sum()))
    fit, score = rank % 2 == 0, rank % 2 == 1
    classifier = LogisticRegression(max_iter=1000).fit(vectors[fit], labels[fit])
    accuracy = float((classifier.predict(vectors[score]) == labels[score]).mean())
    clusters = len(set(labels))
    v_measure = np.mean([v_measure_score(labels, KMeans(clusters, n_init=1, random_state=seed).fit_predict(vectors))
                         for seed in range(5)])
    return {"banking_dev_acc": round(100 * accuracy, 2), "banking_dev_vmeasure": round(100 * float(v_measure), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--variant", action="append", default=[], help="label=recipe[:k=v;k=v]; repeatable")
    parser.add_argument("--score", action="append", default=[],
                        help="label=adapter folder (or 'none': the bare base): score a trained adapter, no training")
    parser.add_argument("--set", dest="common", action="append", default=[], help="key=value for every variant")
    parser.add_argument("--wikitext-tokens", type=int, default=40000)
    parser.add_argument("--sts-pairs", type=int, default=None, help="first N dev pairs only (smoke runs)")
    parser.add_argument("--scores", default="dev", help="dev, validation, or dev,validation")
    parser.add_argument("--validation-limit", type=int, default=None,
                        help="cap every validation task at this many items (default: the validation suite's sizes)")
    parser.add_argument("--skip-done", action="store_true",
                        help="leave out variants the table in --out already has (a resumed queue)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = {kind.strip() for kind in args.scores.split(",") if kind.strip()}
    if not kinds or kinds - {"dev", "validation"}:
        parser.error(f"--scores must name dev and/or validation, got {args.scores!r}")
    scorer = None
    if "validation" in kinds:
        from gem_adapter.evaluation import ValidationScorer

        scorer = ValidationScorer(DATA, limit=args.validation_limit)

    def scores(adapter: Path | None) -> dict:
        row = {}
        if "dev" in kinds:
            row.update(dev_scores(args.base, adapter, args.wikitext_tokens, args.sts_pairs))
        if scorer is not None:
            row.update(validation_scores(args.base, adapter, scorer))
        return row

    previous = args.out / "ablation.json"
    here = machine()
    results: dict = {"machine": here, "common": args.common, "scores": sorted(kinds), "rows": [],
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if previous.is_file():  # a later call adds its rows to the same table
        earlier = json.loads(previous.read_text())
        # Each row keeps the machine it ran on: a resumed table may span machines (train_seconds
        # only compare within one), so the first call's machine stays the table's.
        results["machine"] = earlier["machine"]
        results["rows"] = [{"machine": earlier["machine"], **row} for row in earlier["rows"]]
    if not args.variant and not args.score:
        parser.error("give at least one --variant or --score")
    jobs = [("train", spec) for spec in args.variant] + [("score", spec) for spec in args.score]
    done = {row["variant"] for row in results["rows"]} if args.skip_done else set()
    for kind, spec in jobs:
        if spec.partition("=")[0] in done:
            continue
        if kind == "score":
            label, _, folder = spec.partition("=")
            adapter = None if folder == "none" else Path(folder)
            row = {"variant": label, "recipe": f"trained: {folder}", "overrides": [], "train_seconds": "",
                   **scores(adapter)}
        else:
            label, recipe, overrides = parse_variant(spec)
            row = {"variant": label, "recipe": recipe, "overrides": overrides,
                   **train_and_score(args.base, recipe, args.out / label, args.common + overrides, scores)}
        row["machine"] = here
        row["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        results["rows"] = [r for r in results["rows"] if r["variant"] != label] + [row]
        print(row, flush=True)
        (args.out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "ablation.md").write_text(markdown(results) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}. Common settings: {' '.join(results['common']) or 'none'}."]
    lines += [f"{r['variant']} ran on {r['machine']}." for r in results["rows"] if r["machine"] != results["machine"]]
    lines.append("")
    dev_rows = [r for r in results["rows"] if "sts_dev" in r]
    if dev_rows:
        lines += ["| variant | recipe and overrides | STSB dev | SICK trial | B77 dev acc | B77 dev V | WikiText-2 ppl | train s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in dev_rows:
            lines.append(f"| {r['variant']} | {r['recipe']} {' '.join(r['overrides'])} | {r['sts_dev']} | {r['sick_trial']} | "
                         f"{r.get('banking_dev_acc', '')} | {r.get('banking_dev_vmeasure', '')} | {r.get('wikitext2_ppl', '')} "
                         f"| {r['train_seconds']} |")
        lines.append("")
    val_rows = [r for r in results["rows"] if "validation" in r]
    if val_rows:
        families = list(val_rows[0]["validation_families"])
        tasks = list(val_rows[0]["validation"])
        lines += ["Validation (quick sizes, float32; * = in-domain for that row, left out of its OOD average):", "",
                  "| variant | recipe and overrides | OOD avg | " + " | ".join(families) + " | train s |",
                  "|---|---|---|" + "---|" * len(families) + "---|"]
        for r in val_rows:
            cells = [f"{r['validation_families'].get(f, '')}" for f in families]
            lines.append(f"| {r['variant']} | {r['recipe']} {' '.join(r['overrides'])} | **{r['validation_ood']}** | "
                         + " | ".join(cells) + f" | {r['train_seconds']} |")
        lines += ["", "| variant | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for r in val_rows:
            cells = [f"{r['validation'][t]}{'*' if t in r['validation_in_domain'] else ''}" for t in tasks]
            lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
