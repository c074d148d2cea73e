"""What distillation adds to a training step: the teacher's pass, and a view pass when it distills the corpus.

    python tools/bench_distill_step.py --rounds 3 --threads 1 --out tools/results/cpu-2core

Builds the trainer of ``recipes/smollm2-135m-general.yaml`` once (SmolLM2-135M, pairs from
SNLI/MRPC/COCO, the teacher all-MiniLM-L6-v2) and times one optimizer step (forward, backward; no
optimizer update) on the same collated batches under three settings, interleaved batch by batch so
a change in the machine's load hits all three alike:

- ``pairs only``: ``distill_weight 0`` (NTP + the pairs' InfoNCE);
- ``+ teacher on the pairs' texts``: ``distill_texts pairs`` (the student embeds nothing more; the
  teacher embeds the ~44 pair texts);
- ``+ teacher and a view pass``: ``distill_texts all``, the recipe's setting (one more student pass over
  a crop of each of the 16 chunks; the teacher embeds those too).

Each step is timed twice: wall seconds, and the CPU seconds the process used (``time.process_time``).
On a machine other jobs share, wall seconds say little, and with several threads neither do CPU
seconds (OpenMP threads spin while they wait for a core); ``--threads 1`` (the default) with
``OMP_WAIT_POLICY=PASSIVE`` makes the CPU seconds the work done, whatever else runs. The teacher's own
wall seconds are read from ``Teacher.seconds``. Writes ``bench_distill_step.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

VARIANTS = {
    "pairs only": {"distill_weight": 0.0},
    "+ teacher on the pairs' texts": {"distill_weight": 1.0, "distill_texts": "pairs"},
    "+ teacher and a view pass (all)": {"distill_weight": 1.0, "distill_texts": "all"},
}


def measure(rounds: int, recipe: str, threads: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from gem_adapter.hub import resolve_base
    from gem_adapter.precision import describe_cpu
    from gem_adapter.training import load_recipe
    from gem_adapter.training.run import (
        build_peft_model,
        load_chunks,
        load_training_pairs,
        make_collator,
        tokenize_pairs,
    )
    from gem_adapter.training.trainer import GEMTrainer

    torch.set_num_threads(threads)
    config = load_recipe(recipe, {"output_dir": "runs/bench-distill-step", "max_train_chunks": 16 * (rounds + 1),
                                  "eval_chunks": 0, "distill_weight": 1.0, "distill_texts": "all"})
    tokenizer = AutoTokenizer.from_pretrained(resolve_base(config.base_model))
    chunks, _unused = load_chunks(config, tokenizer)
    pairs = tokenize_pairs(load_training_pairs(config), tokenizer, config.max_chunk_tokens)
    gem = build_peft_model(config)
    collator = make_collator(config, gem, pairs)  # draws views and keeps texts: every variant gets the same batch
    trainer = GEMTrainer(model=gem.model, args=config, data_collator=collator, processing_class=gem.tokenizer,
                         train_dataset=Dataset.from_dict({"input_ids": chunks, "index": list(range(len(chunks)))}),
                         gem_token_ids=gem.gem_token_ids)
    trainer.current_gradient_accumulation_steps = 1
    size = config.per_device_train_batch_size
    batches = [collator([{"input_ids": chunks[i], "index": i} for i in range(start, start + size)])
               for start in range(0, size * (rounds + 1), size)]
    trainer.training_step(trainer.model, dict(batches[0]))  # warm-up: one-off costs
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    teacher_seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    texts = []
    for batch in batches[1:]:
        texts.append({side: len(batch[f"{side}_texts"]) for side in ("view_a", "pair_anchor", "pair_positive",
                                                                       "pair_negative") if f"{side}_texts" in batch})
        for name, settings in VARIANTS.items():
            for key, value in settings.items():
                setattr(trainer.args, key, value)
            before = trainer.teacher.seconds
            trainer.model.zero_grad(set_to_none=True)
            start, cpu_start = time.perf_counter(), time.process_time()
            trainer.training_step(trainer.model, dict(batch))
            seconds[name].append(round(time.perf_counter() - start, 2))
            cpu_seconds[name].append(round(time.process_time() - cpu_start, 2))
            teacher_seconds[name].append(round(trainer.teacher.seconds - before, 2))
    return {"recipe": recipe, "machine": describe_cpu(), "date": time.strftime("%Y-%m-%d"), "rounds": rounds,
            "load_average": [round(x, 2) for x in os.getloadavg()], "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "texts_per_batch": texts, "step_seconds": seconds, "step_cpu_seconds": cpu_seconds,
            "teacher_seconds": teacher_seconds,
            "median_step_seconds": {name: round(statistics.median(v), 2) for name, v in seconds.items()},
            "median_step_cpu_seconds": {name: round(statistics.median(v), 2) for name, v in cpu_seconds.items()},
            "median_teacher_seconds": {name: round(statistics.median(v), 2) for name, v in teacher_seconds.items()}}


def markdown(result: dict, command: str) -> str:
    base = result["median_step_cpu_seconds"]["pairs only"]
    title = (f"# Distillation's share of a training step ({result['machine']}; recipe {result['recipe']}, "
             f"{result['rounds']} batches, {result['date']})")
    lines = [title, "", f"`{command}`", "",
             f"Load average at the end: {result['load_average']} (torch threads: {result['torch_threads']}).", "",
             "| setting | median CPU s/step | + over pairs only | every step, CPU s | every step, wall s | teacher wall s (median) |",
             "|---|---|---|---|---|---|"]
    for name, times in result["step_cpu_seconds"].items():
        median = result["median_step_cpu_seconds"][name]
        lines.append(f"| {name} | {median} | {median - base:+.2f} | {', '.join(map(str, times))} | "
                     f"{', '.join(map(str, result['step_seconds'][name]))} | {result['median_teacher_seconds'][name]} |")
    lines += ["", "Texts per batch (the matrix of `all`): " + "; ".join(
        ", ".join(f"{side} {n}" for side, n in batch.items()) for batch in result["texts_per_batch"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="batches timed (each under every setting)")
    parser.add_argument("--recipe", default="smollm2-135m-general")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU seconds measure the work)")
    parser.add_argument("--out", type=Path, default=Path("tools/results/cpu-2core"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads
    result = measure(args.rounds, args.recipe, args.threads)
    command = f"python tools/bench_distill_step.py --rounds {args.rounds} --threads {args.threads} --out {args.out}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_distill_step.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_distill_step.md").write_text(markdown(result, command))
    print(markdown(result, command))


if __name__ == "__main__":
    main()
