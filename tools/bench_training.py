"""Training benchmark: trained GEM adapters against the base model's training-free embeddings.

    python tools/bench_training.py --adapter runs/smollm2-135m-general --out bench_training
    python tools/bench_training.py --adapter paper=runs/paper --adapter default=runs/cpu --wikitext-tokens 40000

Measures, all in one run on the same machine:
* STSBenchmark **dev** Spearman x100 (cosine similarity), for the base model with mean
  pooling, last-token pooling, PromptEOL (``This sentence : "X" means in one word:"``,
  last token) and its untrained GEM token, and for each adapter (its own template, if any);
* WikiText-2 test perplexity (sliding window 512, stride 256, first N tokens) of the base
  and of the base with each adapter active;
* each adapter's training wall time and tokens/s from its ``train_summary.json``.
Writes ``bench_training.json`` and ``bench_training.md`` into ``--out``. Dev split only:
the test splits are for the evaluation suite, never for choosing a recipe.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

from gem_adapter import GEMModel

DATA = Path(os.environ.get("GEM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PROMPTEOL = 'This sentence : "{text}" means in one word:"'


def sts_dev() -> tuple[list[str], list[str], np.ndarray]:
    with open(DATA / "sts" / "stsbenchmark" / "sts-dev.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], np.array([float(r["score"]) for r in rows])


def spearman_x100(model: GEMModel, left, right, gold, **encode_kwargs) -> float:
    from scipy.stats import spearmanr

    a = model.encode(left, batch_size=64, show_progress_bar=False, **encode_kwargs)
    b = model.encode(right, batch_size=64, show_progress_bar=False, **encode_kwargs)
    return round(100 * float(spearmanr((a * b).sum(axis=1), gold).statistic), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapter", action="append", default=[], help="[label=]folder; repeatable")
    parser.add_argument("--wikitext-tokens", type=int, default=40000, help="0 skips perplexity")
    parser.add_argument("--baselines", default="mean,last,prompteol,gem",
                        help="comma list of mean,last,prompteol,gem (base model rows); empty for none")
    parser.add_argument("--out", type=Path, default=Path("bench_training"))
    args = parser.parse_args()
    from gem_adapter.evaluation.lm import evaluate_wikitext2

    left, right, gold = sts_dev()
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "sts_dev_pairs": len(gold), "rows": []}

    def perplexity(model) -> float | None:
        if not args.wikitext_tokens:
            return None
        out = evaluate_wikitext2(model, DATA, max_tokens=args.wikitext_tokens, show_progress=False)
        results["wikitext_note"] = out["note"]
        return round(out["perplexity"], 3)

    base = GEMModel.from_pretrained(args.base, adapter=None, dtype="float32")  # every row scored in float32
    baselines = {
        "mean": ("base, mean pooling", {"pooling": "mean"}),
        "last": ("base, last token", {"pooling": "last"}),
        "prompteol": ("base, PromptEOL (last token)", {"pooling": "last", "template": PROMPTEOL}),
        "gem": ("base, untrained GEM token", {"pooling": "gem"}),
    }
    for name in filter(None, args.baselines.split(",")):
        label, kwargs = baselines[name.strip()]
        if True:
            start = time.time()
            score = spearman_x100(base, left, right, gold, **kwargs)
            results["rows"].append({"model": label, "sts_dev": score, "seconds": round(time.time() - start, 1)})
            print(results["rows"][-1], flush=True)
    base_ppl = perplexity(base)
    results["rows"].append({"model": "base (generation)", "wikitext2_ppl": base_ppl})
    del base

    for spec in args.adapter:
        label, _, folder = spec.rpartition("=")
        folder = Path(folder)
        label = label or folder.name
        model = GEMModel.from_pretrained(args.base, adapter=folder, dtype="float32")
        start = time.time()
        row = {"model": f"GEM adapter {label}", "sts_dev": spearman_x100(model, left, right, gold),
               "seconds": round(time.time() - start, 1), "template": model.config.template}
        ppl = perplexity(model)
        if ppl is not None and base_ppl:
            row.update(wikitext2_ppl=ppl, ppl_change_pct=round(100 * (ppl / base_ppl - 1), 2))
        summary = folder / "train_summary.json"
        if summary.is_file():
            train = json.loads(summary.read_text())
            row.update(train_seconds=train.get("train_runtime_s"), train_steps=train.get("global_step"),
                       train_tokens_per_s=train.get("tokens_per_second"))
        results["rows"].append(row)
        print(row, flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_training.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| model | STSB dev Spearman x100 | WikiText-2 ppl | ppl change | train time (s) | train tokens/s |",
             "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        cell = lambda key: "" if row.get(key) is None else str(row[key])  # noqa: E731
        lines.append(f"| {row['model']} | {cell('sts_dev')} | {cell('wikitext2_ppl')} | {cell('ppl_change_pct')} | "
                     f"{cell('train_seconds')} | {cell('train_tokens_per_s')} |")
    lines.append(f"\nWikiText-2: {results.get('wikitext_note', 'skipped')}. Machine: {results['machine']}.")
    (args.out / "bench_training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
