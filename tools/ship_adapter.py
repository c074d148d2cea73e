"""Put a trained adapter into the package as the shipped adapter of a base alias, with its card.

    gem train --recipe smollm2-135m-cpu --out runs/shipped-smollm2
    python tools/ship_adapter.py runs/shipped-smollm2 --alias smollm2-135m

Copies what loading needs and what documents the run (adapter weights and config,
gem_config.json, training_config.json, train_summary.json) into gem_adapter/shipped/<alias>/,
leaving out the tokenizer (the base's, plus the GEM tokens ``GEMModel`` adds, gives the same
ids), checkpoints and logs. Scores the adapter on dev splits (STSBenchmark dev, SICK trial,
WikiText-2; ``recipe_ablation.dev_scores``) next to the bare base, and writes README.md: what it
is, the command that made it, the train splits it used, the scores. Refuses a result over
``--max-bytes`` (10 MB) and leaves the old folder in place until the new one is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from recipe_ablation import dev_scores, machine

from gem_adapter.atomic import apply_umask
from gem_adapter.hub import SHIPPED_ADAPTERS, SHIPPED_DIR

FILES = ("adapter_config.json", "adapter_model.safetensors", "gem_config.json", "training_config.json",
         "train_summary.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--alias", default="smollm2-135m", choices=sorted(SHIPPED_ADAPTERS))
    parser.add_argument("--recipe", default="smollm2-135m-cpu")
    parser.add_argument("--max-bytes", type=int, default=10_000_000)
    parser.add_argument("--wikitext-tokens", type=int, default=40000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    missing = [name for name in FILES if not (args.adapter / name).is_file()]
    if missing:
        raise SystemExit(f"{args.adapter} lacks {', '.join(missing)}; give a folder written by gem train")
    size = sum((args.adapter / name).stat().st_size for name in FILES)
    if size > args.max_bytes:
        raise SystemExit(f"{args.adapter} holds {size:,} bytes, over the {args.max_bytes:,} budget; lower lora_r")

    summary = json.loads((args.adapter / "train_summary.json").read_text())
    scores = {"adapter": dev_scores(args.alias, args.adapter, args.wikitext_tokens),
              "base, untrained GEM token": dev_scores(args.alias, None, args.wikitext_tokens)}
    target = SHIPPED_DIR / SHIPPED_ADAPTERS[args.alias]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    for name in FILES:
        shutil.copyfile(args.adapter / name, staging / name)
        apply_umask(staging / name)
    (staging / "dev_scores.json").write_text(json.dumps({"machine": machine(), **scores}, indent=2) + "\n")
    (staging / "README.md").write_text(card(args, summary, scores, size))
    apply_umask(staging, directory=True)  # mkdtemp makes it private; the package folder is not
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    print(f"shipped {args.adapter} as {target} ({size:,} bytes)")
    print(json.dumps(scores, indent=2))


def scope_note(adapter: Path) -> str:
    """A paragraph on the adapter's scope (gem_config.json's adapter_scope)."""
    scope = json.loads((adapter / "gem_config.json").read_text()).get("adapter_scope", "all")
    if scope == "gem":
        return ("\nScope: `adapter_scope: gem`. The LoRA applies at the GEM tokens and after them only, so a text\n"
                "without GEM tokens (generation, MMLU, perplexity) gets exactly the base model's logits; it cannot\n"
                "be merged or exported (serve it with `GEMModel` or `gem serve`).\n")
    return "\nScope: `adapter_scope: all`. The LoRA applies at every token, so it also changes generation a little.\n"


def card(args, summary: dict, scores: dict, size: int) -> str:
    splits = summary.get("train_splits_used") or []
    pairs = summary.get("train_pairs") or {}
    rows = "\n".join(f"| {name} | {s['sts_dev']} | {s['sick_trial']} | {s.get('wikitext2_ppl', '')} |"
                     for name, s in scores.items())
    minutes = summary.get("train_runtime_s")
    return f"""# GEM adapter shipped for `{args.alias}`

Loaded by `GEMModel.from_pretrained("{args.alias}")` and by `gem embed` / `gem eval` with
`--base {args.alias}` unless `adapter=None` / `--no-adapter` asks for the bare base.

Made with the project's default recipe, seeded, on 2 CPU cores:

    gem train --recipe {args.recipe} --out runs/shipped-smollm2
    python tools/ship_adapter.py runs/shipped-smollm2 --alias {args.alias}

Training: {summary.get('global_step')} steps in {round(minutes / 60, 1) if minutes else '?'} min
(train_summary.json; training_config.json holds every setting). Weights: {size:,} bytes (LoRA and
GEM rows, float32); the tokenizer is the base's with the GEM tokens added.
{scope_note(args.adapter)}
Train splits used (supervised pairs; no dev or test split): {', '.join(splits) or 'none'}.
Pairs per source: {', '.join(f'{k} {v}' for k, v in pairs.items()) or 'none'}. Every other
benchmark split, and Banking77 as a whole, was never seen in training.

Dev splits (float32; `dev_scores.json`; machine: {machine()}):

| model | STSBenchmark dev | SICK trial | WikiText-2 ppl (first {args.wikitext_tokens:,} test tokens) |
|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    main()
