"""k ablation: train the same recipe with k = 1, 2, 4 GEM tokens and compare them.

    python tools/k_ablation.py --out runs/k-ablation                       # the CPU recipe as it is
    python tools/k_ablation.py --out runs/k-ablation --set max_steps=20    # shorter, same for every k

For each k the recipe (default: smollm2-135m-cpu) is trained with ``num_gem_tokens=k`` and
nothing else changed (same data, steps and seed), then measured on STSBenchmark **dev**
(Spearman x100, the adapter's own template) and WikiText-2 test perplexity (first N tokens,
window 512, stride 256). ``--seeds`` repeats every k with other training seeds, so a gain
can be told from seed noise. Adapters that already exist in ``--out/k<k>-seed<s>`` are
reused, so a run cut short (or extended with more seeds) continues where it stopped.

Writes ``k_ablation.json`` and ``k_ablation.md`` with the decision rule applied: keep k = 1
unless a larger k beats it on mean STS dev by more than ``--min-gain`` points and by more
than the seed-to-seed spread. k = 1 is the
simple choice because its embedding mask equals plain causal attention, so a merged k = 1
model serves embeddings in any engine that offers last-token pooling; k > 1 needs the GEM
mask (the GEM tokens must not see each other) at inference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_training import spearman_x100, sts_dev

from gem_adapter import GEMModel
from gem_adapter.training.recipes import load_recipe, parse_overrides
from gem_adapter.training.run import train


def decide(rows: list[dict], min_gain: float) -> tuple[int, str]:
    """The k the numbers justify, and the sentence that says why.

    A larger k must beat k = 1 on mean STS dev by more than ``min_gain`` points and by more
    than the seed-to-seed spread seen for any k (when several seeds ran).
    """
    by_k: dict[int, list[float]] = {}
    for row in rows:
        by_k.setdefault(row["k"], []).append(row["sts_dev"])
    if 1 not in by_k:
        return 0, "k = 1 was not measured; no decision"
    mean = {k: sum(v) / len(v) for k, v in by_k.items()}
    spread = max(max(v) - min(v) for v in by_k.values())
    seeds = max(len(v) for v in by_k.values())
    bar = max(min_gain, spread)
    best = max(mean, key=mean.get)
    gain = mean[best] - mean[1]
    noise = f"seed spread {spread:.2f} over {seeds} seeds" if seeds > 1 else "one seed, spread unknown"
    if best != 1 and gain > bar:
        return best, f"k = {best} beats k = 1 by {gain:.2f} points on mean STS dev (> {bar:.2f}; {noise}), worth the custom mask at inference"
    return 1, (f"no k beats k = 1 by more than {bar:.2f} points on mean STS dev (best k = {best}: {gain:+.2f}; {noise}); "
               "k = 1 keeps the merged model servable with plain last-token pooling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="smollm2-135m-cpu")
    parser.add_argument("--k", default="1,2,4", help="comma list of GEM token counts")
    parser.add_argument("--seeds", default="0", help="comma list of training seeds, each run for every k")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override applied to every k (repeatable)")
    parser.add_argument("--wikitext-tokens", type=int, default=10000, help="0 skips perplexity")
    parser.add_argument("--min-gain", type=float, default=1.0, help="STS dev points a larger k must gain")
    parser.add_argument("--out", type=Path, default=Path("runs/k-ablation"))
    args = parser.parse_args()
    from bench_training import DATA

    from gem_adapter.evaluation.lm import evaluate_wikitext2

    left, right, gold = sts_dev()
    overrides = parse_overrides(args.overrides)
    results: dict = {"recipe": args.recipe, "overrides": overrides, "wikitext_tokens": args.wikitext_tokens, "rows": []}
    base_ppl = None
    if args.wikitext_tokens:
        base = GEMModel.from_pretrained(load_recipe(args.recipe, overrides).base_model, adapter=None, dtype="float32")
        base_ppl = evaluate_wikitext2(base, DATA, max_tokens=args.wikitext_tokens, show_progress=False)["perplexity"]
        results["base_wikitext2_ppl"] = round(base_ppl, 3)
        del base

    runs = [(int(k), int(seed)) for seed in args.seeds.split(",") for k in args.k.split(",")]
    for k, seed in runs:
        folder = args.out / f"k{k}-seed{seed}"
        config = load_recipe(args.recipe, {**overrides, "num_gem_tokens": k, "seed": seed, "output_dir": str(folder)})
        measured = folder / "k_ablation_row.json"
        if measured.is_file():  # trained and measured by an earlier run of this tool
            results["rows"].append(json.loads(measured.read_text()))
            print(results["rows"][-1], flush=True)
            continue
        if not (folder / "gem_config.json").is_file():
            train(config, overwrite=True)
        summary = json.loads((folder / "train_summary.json").read_text())
        model = GEMModel.from_pretrained(config.base_model, adapter=folder, dtype="float32")
        start = time.time()
        row = {"k": k, "seed": seed, "sts_dev": spearman_x100(model, left, right, gold),
               "sts_dev_seconds": round(time.time() - start, 1), "train_steps": summary["global_step"],
               "train_seconds": summary["train_runtime_s"], "final_eval_loss": summary.get("final_eval", {}).get("eval_loss")}
        if base_ppl:
            ppl = evaluate_wikitext2(model, DATA, max_tokens=args.wikitext_tokens, show_progress=False)["perplexity"]
            row.update(wikitext2_ppl=round(ppl, 3), ppl_change_pct=round(100 * (ppl / base_ppl - 1), 2))
        results["rows"].append(row)
        measured.write_text(json.dumps(row) + "\n")
        print(row, flush=True)
        del model

    chosen, reason = decide(results["rows"], args.min_gain)
    results.update(chosen_k=chosen, reason=reason)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "k_ablation.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Recipe {args.recipe}, overrides {overrides or 'none'}; STS = STSBenchmark dev Spearman x100.", "",
             "| k | seed | STS dev | WikiText-2 ppl | ppl change % | steps | train s | final eval loss |", "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['k']} | {row['seed']} | {row['sts_dev']} | {row.get('wikitext2_ppl', '')} | {row.get('ppl_change_pct', '')} | "
                     f"{row['train_steps']} | {row['train_seconds']} | {round(row['final_eval_loss'] or 0, 3)} |")
    lines += ["", f"Base WikiText-2 ppl: {results.get('base_wikitext2_ppl', 'skipped')}.", f"Decision: k = {chosen}: {reason}."]
    (args.out / "k_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
