"""bfloat16 against float32 for what a user runs: ``encode`` of the shipped adapter on STSBenchmark dev.

    python tools/bench_bf16_encode.py --out tools/results/cpu-2core
    python tools/bench_bf16_encode.py --texts 512 --repeats 3 --profile --out /tmp/bf16

Loads the default model with its shipped adapter twice (``dtype="float32"`` and
``dtype="bfloat16"``), encodes the STSBenchmark dev sentences (all 3,000 by default, batches of
32) with each, alternating the two ``--repeats`` times, and reports the median wall time of each,
their ratio, and each dtype's STSBenchmark dev Spearman x100 (the 1,500 pairs when all sentences
are encoded), and the ceiling the processor sets: one linear layer's GFLOP/s in each dtype at the
model's own shapes (a batch of 32 texts of ~45 tokens through 576 -> 576 / 1536). ``--profile`` adds torch.profiler's top operators of one bfloat16 encode of the first
96 sentences. The machine line names the processor and its bfloat16 support: bfloat16 is native
only with AVX512-BF16 or AMX (elsewhere it is emulated and slower than float32). Writes
``bench_bf16_encode.json`` and ``bench_bf16_encode.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_training import sts_dev

from gem_adapter import GEMModel
from gem_adapter.precision import describe_cpu


def linear_gflops(rows: int, inputs: int, outputs: int, dtype: torch.dtype, repeats: int = 30) -> float:
    """GFLOP/s of ``torch.nn.functional.linear`` on a (rows x inputs) batch and an (outputs x inputs) weight."""
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(rows, inputs, generator=generator).to(dtype)
    weight = torch.randn(outputs, inputs, generator=generator).to(dtype)
    for _ in range(3):
        torch.nn.functional.linear(batch, weight)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(batch, weight)
    return 2 * rows * inputs * outputs * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapter", default="default", help="adapter folder; 'default': the shipped one; 'none'")
    parser.add_argument("--texts", type=int, default=None, help="first N sentences only (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    left, right, gold = sts_dev()
    texts = (left + right)[: args.texts] if args.texts else left + right
    adapter = None if args.adapter == "none" else args.adapter
    models = {dtype: GEMModel.from_pretrained(args.base, adapter=adapter, dtype=dtype) for dtype in ("float32", "bfloat16")}
    times: dict[str, list[float]] = {dtype: [] for dtype in models}
    vectors: dict[str, np.ndarray] = {}
    for dtype, model in models.items():  # warm-up: first calls pay one-time costs
        model.encode(texts[: args.batch_size], batch_size=args.batch_size)
    for _ in range(args.repeats):
        for dtype, model in models.items():
            start = time.perf_counter()
            vectors[dtype] = model.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
            times[dtype].append(time.perf_counter() - start)
    rows = {}
    for dtype in models:
        row = {"median_s": round(statistics.median(times[dtype]), 2), "all_s": [round(t, 2) for t in times[dtype]],
               "sentences_per_s": round(len(texts) / statistics.median(times[dtype]), 1)}
        if len(texts) == len(left) + len(right):
            a, b = vectors[dtype][: len(left)], vectors[dtype][len(left):]
            from scipy.stats import spearmanr

            row["sts_dev"] = round(100 * float(spearmanr((a * b).sum(axis=1), gold).statistic), 2)
        row["norm_deviation"] = float(np.abs(np.linalg.norm(vectors[dtype], axis=1) - 1).max())
        rows[dtype] = row
    result = {"machine": describe_cpu(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "adapter": args.adapter, "texts": len(texts),
              "batch_size": args.batch_size, "repeats": args.repeats, "rows": rows,
              "speedup_bf16": round(rows["float32"]["median_s"] / rows["bfloat16"]["median_s"], 2)}
    # the matmul ceiling: decoder matmuls are most of an encode (see --profile), so its ratio bounds the speed-up
    shapes = [(1440, 576, 576), (1440, 576, 1536), (1440, 1536, 576)]
    result["linear_gflops"] = {f"{m}x{k}->{n}": {dtype: round(linear_gflops(m, k, n, getattr(torch, dtype)))
                                                 for dtype in ("float32", "bfloat16")} for m, k, n in shapes}
    result["linear_speedup_bf16"] = round(statistics.median(
        row["bfloat16"] / row["float32"] for row in result["linear_gflops"].values()), 2)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            models["bfloat16"].encode(texts[:96], batch_size=args.batch_size, show_progress_bar=False)
        table = prof.key_averages()
        total = sum(event.self_cpu_time_total for event in table)
        result["profile_bf16"] = [{"op": event.key, "self_ms": round(event.self_cpu_time_total / 1000, 1),
                                   "share": round(event.self_cpu_time_total / total, 3), "calls": event.count}
                                  for event in sorted(table, key=lambda e: -e.self_cpu_time_total)[:15]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_bf16_encode.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"`python tools/bench_bf16_encode.py` {result['date']}: {result['machine']}, torch {result['torch']}, "
             f"{result['threads']} threads; adapter {args.adapter}; {len(texts)} STSBenchmark dev sentences, "
             f"batches of {args.batch_size}, median of {args.repeats} alternating repeats.", "",
             "| dtype | median s | sentences/s | STSB dev | max norm deviation |", "|---|---|---|---|---|"]
    for dtype, row in rows.items():
        lines.append(f"| {dtype} | {row['median_s']} | {row['sentences_per_s']} | {row.get('sts_dev', '')} | "
                     f"{row['norm_deviation']:.1e} |")
    lines += ["", f"bfloat16 / float32 speed: **{result['speedup_bf16']}x**", "",
              f"The ceiling: one linear layer at the model's shapes runs {result['linear_speedup_bf16']}x faster in "
              "bfloat16 here (median of the shapes below, GFLOP/s):", "", "| shape | float32 | bfloat16 |", "|---|---|---|"]
    lines += [f"| {shape} | {row['float32']} | {row['bfloat16']} |" for shape, row in result["linear_gflops"].items()]
    if "profile_bf16" in result:
        lines += ["", "bfloat16 profile (96 sentences): | op | self ms | share | calls |", "|---|---|---|---|"]
        lines += [f"| {p['op']} | {p['self_ms']} | {p['share']} | {p['calls']} |" for p in result["profile_bf16"]]
    (args.out / "bench_bf16_encode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
