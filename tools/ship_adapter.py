"""Put a trained adapter into the package as the shipped adapter of a base alias, with its card.

    gem train --recipe smollm2-135m-general --out runs/shipped-smollm2
    gem eval --adapter runs/shipped-smollm2 --suite validation --out runs/shipped-validation
    gem eval --adapter runs/shipped-smollm2 --suite quick --out runs/shipped-quick
    python tools/ship_adapter.py runs/shipped-smollm2 --alias smollm2-135m \
        --eval runs/shipped-validation --eval runs/shipped-quick

Copies what loading needs and what documents the run (adapter weights and config,
gem_config.json, training_config.json, train_summary.json) into gem_adapter/shipped/<alias>/,
leaving out the tokenizer (the base's, plus the GEM tokens ``GEMModel`` adds, gives the same
ids), checkpoints and logs. Scores the adapter on dev splits (STSBenchmark dev, SICK trial,
WikiText-2; ``recipe_ablation.dev_scores``) next to the bare base, and writes README.md: what it
is, the command that made it, the train splits it used, the scores. Each ``--eval`` run of
``gem eval`` on this adapter (the digest it recorded must match the trained folder, or the copy
shipped in the package, as they are now) goes beside it as ``eval-<suite>-report.md`` and ``eval-<suite>-summary.json``. Refuses a result
over ``--max-bytes`` (10 MB) and leaves the old folder in place until the new one is complete.
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
from gem_adapter.evaluation.runner import adapter_digest
from gem_adapter.hub import SHIPPED_ADAPTERS, SHIPPED_DIR

FILES = ("adapter_config.json", "adapter_model.safetensors", "gem_config.json", "training_config.json",
         "train_summary.json")
REPORT_FILES = ("report.md", "summary.json")  # of a gem eval run; shipped as eval-<suite>-<name>


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--alias", default="smollm2-135m", choices=sorted(SHIPPED_ADAPTERS))
    parser.add_argument("--recipe", default="smollm2-135m-general")
    parser.add_argument("--eval", type=Path, action="append", default=[], metavar="RUN",
                        help="a gem eval output folder of this adapter, copied beside it (repeatable)")
    parser.add_argument("--max-bytes", type=int, default=10_000_000)
    parser.add_argument("--wikitext-tokens", type=int, default=40000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    missing = [name for name in FILES if not (args.adapter / name).is_file()]
    if missing:
        raise SystemExit(f"{args.adapter} lacks {', '.join(missing)}; give a folder written by gem train")
    target = SHIPPED_DIR / SHIPPED_ADAPTERS[args.alias]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name in FILES:
            shutil.copyfile(args.adapter / name, staging / name)
            apply_umask(staging / name)
        # a report may have scored the trained folder or the shipped copy (which has no tokenizer files)
        digests = {adapter_digest(args.adapter): str(args.adapter), adapter_digest(staging): str(target)}
        reports = {run: evaluated_suite(run, digests) for run in args.eval}  # refused before any scoring
        size = sum((args.adapter / name).stat().st_size for name in FILES)
        total = size + sum((run / name).stat().st_size for run in reports for name in REPORT_FILES)
        if total > args.max_bytes:
            raise SystemExit(f"{args.adapter} and its reports hold {total:,} bytes, over the {args.max_bytes:,} "
                             "budget; lower lora_r")
        summary = json.loads((args.adapter / "train_summary.json").read_text())
        scores = {"adapter": dev_scores(args.alias, args.adapter, args.wikitext_tokens),
                  "base, untrained GEM token": dev_scores(args.alias, None, args.wikitext_tokens)}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the old folder stays as it was
        raise
    for run, suite in reports.items():
        for name in REPORT_FILES:
            shutil.copyfile(run / name, staging / f"eval-{suite}-{name}")
            apply_umask(staging / f"eval-{suite}-{name}")
    (staging / "dev_scores.json").write_text(json.dumps({"machine": machine(), **scores}, indent=2) + "\n")
    (staging / "README.md").write_text(card(args, summary, scores, size, sorted(reports.values())))
    apply_umask(staging, directory=True)  # mkdtemp makes it private; the package folder is not
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    print(f"shipped {args.adapter} as {target} ({size:,} bytes)")
    print(json.dumps(scores, indent=2))


def evaluated_suite(run: Path, digests: dict[str, str]) -> str:
    """The suite of the ``gem eval`` run in ``run``, after checking that it scored these weights.

    ``digests`` maps ``adapter_digest`` values of the adapter as it is now (the trained folder, the
    copy to be shipped) to their folders.
    """
    try:
        record = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"{run} holds no readable run.json; give a folder written by gem eval") from None
    missing = [name for name in REPORT_FILES if not (run / name).is_file()]
    if missing:
        raise SystemExit(f"{run} lacks {', '.join(missing)}; let gem eval finish (--resume) before shipping it")
    # the digest gem eval recorded covers the adapter folder's weights and configs when it was scored
    if record.get("adapter_digest") not in digests:
        raise SystemExit(f"{run} scored {record.get('adapter')}, not {' or '.join(digests.values())} as it is now; "
                         "evaluate the adapter you ship")
    return record["suite"]


def scope_note(adapter: Path) -> str:
    """A paragraph on the adapter's scope and k (gem_config.json): what it gives and where it can go."""
    config = json.loads((adapter / "gem_config.json").read_text())
    if config.get("adapter_scope", "all") == "gem":
        k = config.get("num_gem_tokens", 1)
        where = ("It merges and exports (`gem merge`, `gem export`) to stock transformers + PEFT,\n"
                 "sentence-transformers and vLLM (with this project's plugin); docs/guides/export.md.\n" if k == 1 else
                 f"With k = {k} GEM tokens, which must not see each other, it cannot be merged or exported (serve it\n"
                 "with `GEMModel` or `gem serve`).\n")
        return ("\nScope: `adapter_scope: gem`. The LoRA applies at the GEM tokens and after them only, so a text\n"
                "without GEM tokens (generation, MMLU, perplexity) gets exactly the base model's logits.\n" + where)
    return "\nScope: `adapter_scope: all`. The LoRA applies at every token, so it also changes generation a little.\n"


def card(args, summary: dict, scores: dict, size: int, suites: list[str]) -> str:
    splits = summary.get("train_splits_used") or []
    pairs = summary.get("train_pairs") or {}
    rows = "\n".join(f"| {name} | {s['sts_dev']} | {s['sick_trial']} | {s.get('wikitext2_ppl', '')} |"
                     for name, s in scores.items())
    minutes = summary.get("train_runtime_s")
    return f"""# GEM adapter shipped for `{args.alias}`

Loaded by `GEMModel.from_pretrained("{args.alias}")` and by `gem embed` / `gem eval` with
`--base {args.alias}` unless `adapter=None` / `--no-adapter` asks for the bare base.

Made with the recipe `{args.recipe}`, seeded, on 2 CPU cores:

    gem train --recipe {args.recipe} --out runs/shipped-smollm2
    python tools/ship_adapter.py runs/shipped-smollm2 --alias {args.alias}{''.join(f" --eval runs/shipped-{s}" for s in suites)}

Training: {summary.get('global_step')} steps in {round(minutes / 60, 1) if minutes else '?'} min
(train_summary.json; training_config.json holds every setting). Weights: {size:,} bytes (LoRA and
GEM rows, float32); the tokenizer is the base's with the GEM tokens added.
{scope_note(args.adapter)}
Train splits of the evaluation suites' tasks used (supervised pairs; never a dev or test split):
{', '.join(splits) or 'none'}. Pairs per source: {', '.join(f'{k} {v}' for k, v in pairs.items()) or 'none'}.{teacher_note(summary)}
No split of the validation sets was used.

Dev splits (float32; `dev_scores.json`; machine: {machine()}):

| model | STSBenchmark dev | SICK trial | WikiText-2 ppl (first {args.wikitext_tokens:,} test tokens) |
|---|---|---|---|
{rows}
{reports_note(suites)}"""


def teacher_note(summary: dict) -> str:
    """The card's sentence on the distillation teacher, if the run had one."""
    teacher = (summary.get("distillation") or {}).get("teacher") or {}
    return f"\nDistilled from {teacher['name']} (its similarities over the step's texts)." if teacher.get("name") else ""


SUITE_NOTES = {"validation": "the out-of-domain validation suite (seven sets no recipe trains on, quick sizes), "
                             "what recipes and checkpoints are chosen by",
               "validation-full": "the out-of-domain validation suite, every test item",
               "quick": "the quick suite (embedding test splits and the language-model tasks, with baselines)",
               "full": "the full suite"}


def reports_note(suites: list[str]) -> str:
    """The card's paragraph on the evaluation reports shipped beside the adapter."""
    if not suites:
        return ""
    lines = "\n".join(f"- `eval-{s}-report.md` (and `-summary.json`): `gem eval --suite {s}`, {SUITE_NOTES.get(s, s)}"
                      for s in suites)
    return f"\nEvaluations of this adapter, from `gem eval` (each report names its versions, dtype and date):\n\n{lines}\n"


if __name__ == "__main__":
    main()
