"""Does bfloat16 move quality? Two checks of issue 14, in one run on one machine.

    python tools/precision_quality.py --out runs/precision_quality            # a GPU: minutes
    python tools/precision_quality.py --seeds 0 --set max_steps=20 --out ...  # a CPU: a smoke run

1. Training: the recipe trained once per (base dtype, seed), frozen base in float32 or in
   bfloat16 (LoRA weights, GEM rows, optimizer state and the loss in float32 either way; no
   autocast). Each adapter is then scored in float32: STSBenchmark **dev** Spearman x100 (all
   1,500 pairs), SICK trial and WikiText-2 test perplexity (first ``--wikitext-tokens`` tokens). The
   question is whether the bfloat16-trained adapters fall inside the float32 seeds' spread.
2. Inference: the first float32-trained adapter encodes STS dev with float32 weights and with
   bfloat16 weights; the two scores and the smallest cosine between the two embeddings of a
   sentence.

Dev split only. Writes ``precision_quality.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench_training import spearman_x100, sts_dev
from gem_adapter import GEMModel
from recipe_ablation import machine, train_and_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--recipe", default="smollm2-135m-cpu")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe key=value; repeatable")
    parser.add_argument("--wikitext-tokens", type=int, default=40000)
    parser.add_argument("--sts-pairs", type=int, default=None, help="first N dev pairs only (smoke runs)")
    parser.add_argument("--out", type=Path, default=Path("runs/precision_quality"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    left, right, gold = (part[: args.sts_pairs] for part in sts_dev())
    results: dict = {"machine": machine(), "recipe": args.recipe, "overrides": args.overrides, "runs": [],
                     "sts_pairs": len(gold),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save() -> None:
        (args.out / "precision_quality.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "precision_quality.md").write_text(markdown(results) + "\n")

    for dtype in dtypes:
        for seed in seeds:
            overrides = [f"base_dtype={dtype}", "bf16=false", f"seed={seed}", *args.overrides]
            row = train_and_score(args.base, args.recipe, args.out / f"{dtype}-seed{seed}", overrides,
                                  args.wikitext_tokens, args.sts_pairs)
            results["runs"].append({"base_dtype": dtype, "seed": seed, **row})
            print(results["runs"][-1], flush=True)
            save()

    first = args.out / f"{dtypes[0]}-seed{seeds[0]}"
    encoded = {}
    for dtype in ("float32", "bfloat16"):
        model = GEMModel.from_pretrained(args.base, adapter=first, dtype=dtype)
        encoded[dtype] = (spearman_x100(model, left, right, gold),
                          model.encode(left + right, batch_size=64, show_progress_bar=False))
        del model
    cosine = (encoded["float32"][1] * encoded["bfloat16"][1]).sum(axis=1)
    results["inference"] = {"adapter": first.name, "sts_dev_float32": encoded["float32"][0],
                            "sts_dev_bfloat16": encoded["bfloat16"][0], "min_cosine": round(float(np.min(cosine)), 5),
                            "sentences": len(cosine)}
    print(results["inference"], flush=True)
    save()
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}. Recipe {results['recipe']} {' '.join(results['overrides'])}; "
             f"STSBenchmark dev ({results['sts_pairs']} pairs) and WikiText-2 scored in float32.", "",
             "| base dtype in training | seed | STS dev | SICK trial | WikiText-2 ppl | train s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['base_dtype']} | {r['seed']} | {r['sts_dev']} | {r['sick_trial']} | {r['wikitext2_ppl']} | {r['train_seconds']} |"
              for r in results["runs"]]
    by_dtype: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by_dtype.setdefault(r["base_dtype"], []).append(r)
    lines += ["", "| base dtype | STS dev mean (min-max) | ppl mean (min-max) |", "|---|---|---|"]
    for dtype, runs in by_dtype.items():
        sts = [r["sts_dev"] for r in runs]
        ppl = [r["wikitext2_ppl"] for r in runs]
        lines.append(f"| {dtype} | {statistics.mean(sts):.2f} ({min(sts)}-{max(sts)}) | "
                     f"{statistics.mean(ppl):.3f} ({min(ppl)}-{max(ppl)}) |")
    if "inference" in results:
        i = results["inference"]
        lines += ["", f"Same adapter ({i['adapter']}) encoded with float32 vs bfloat16 weights: STS dev "
                  f"{i['sts_dev_float32']} vs {i['sts_dev_bfloat16']}, smallest cosine between the two embeddings of "
                  f"a sentence {i['min_cosine']} over {i['sentences']} sentences."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
