"""Training step time under adapter_scope gem: the frozen-prefix pass against one gated pass.

    python tools/bench_scoped_step.py --steps 6 --out tools/results/cpu-2core

With scope ``gem`` the text before the GEM tokens is the frozen base's work, so training
runs it once without a graph and backpropagates through the GEM and suffix tokens only
(``scope.frozen_prefix_hidden_states``). This trains the default recipe for a few steps
both ways (the same seed, data and batches; evaluation and checkpoints off) and reports
the seconds of every optimizer step after the first (the first pays one-off costs), their
mean and median, the peak resident memory, and how far apart the two adapters end (they should
agree to float rounding). Writes ``bench_scoped_step.json`` and ``.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path


def run(path: str, steps: int, recipe: str, queue) -> None:
    """Train ``steps`` steps in this (child) process; put step times, peak RSS and the adapter's folder."""
    import torch
    from transformers import TrainerCallback

    from gem_adapter import scope
    from gem_adapter.training import load_recipe, train
    from gem_adapter.training import trainer as trainer_module

    if path == "one gated pass":
        trainer_module.frozen_prefix_hidden_states = scope.gated_hidden_states

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    clock = StepClock()
    out = tempfile.mkdtemp(prefix="bench-scoped-")
    config = load_recipe(recipe, {"max_steps": steps, "output_dir": out, "eval_strategy": "no", "save_steps": 10_000,
                                  "logging_steps": 1, "disable_tqdm": True})
    folder = train(config, callbacks=[clock])
    queue.put({"path": path, "step_seconds": [round(t, 2) for t in clock.times], "threads": torch.get_num_threads(),
               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "adapter": str(folder)})


def main() -> None:
    from gem_adapter.precision import describe_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--recipe", default="smollm2-135m-cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_scoped_step"))
    args = parser.parse_args()
    from safetensors.torch import load_file

    context = multiprocessing.get_context("spawn")  # a fresh process each: peak memory of one path only
    rows = []
    for path in ("frozen prefix", "one gated pass"):
        queue = context.Queue()
        process = context.Process(target=run, args=(path, args.steps, args.recipe, queue))
        process.start()
        rows.append(queue.get())
        process.join()
    for row in rows:
        timed = row["step_seconds"][1:] or row["step_seconds"]
        row["median_step_s"] = statistics.median(timed)
        row["mean_step_s"] = round(statistics.fmean(timed), 2)
    weights = [load_file(Path(row["adapter"]) / "adapter_model.safetensors") for row in rows]
    difference = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
    for row in rows:
        del row["adapter"]  # a temporary folder
    result = {"machine": describe_cpu(), "recipe": args.recipe,
              "steps": args.steps, "rows": rows, "speedup": round(rows[1]["mean_step_s"] / rows[0]["mean_step_s"], 2),
              "max_adapter_weight_difference": difference}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_scoped_step.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Training step time, adapter_scope gem ({result['machine']}; recipe {args.recipe}, {args.steps} steps)", "",
             "| path | mean s/step (steps 2..) | median | every step (s) | peak RSS GiB |", "|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['mean_step_s']:.2f} | {r['median_step_s']:.2f} | {', '.join(map(str, r['step_seconds']))} | {r['peak_rss_gib']} |"
              for r in rows]
    lines += ["", (f"Speed-up {result['speedup']}x (mean step time; both runs see the same batches); the two adapters "
                   f"differ by at most {difference:.2e} in any weight.")]
    (args.out / "bench_scoped_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
