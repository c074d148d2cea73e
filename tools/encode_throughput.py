"""Measure GEMModel.encode throughput (sentences/s) on STSBenchmark dev sentences.

    python tools/encode_throughput.py --base smollm2-135m --batch-size 32 --n 1500 --repeats 3

Prints the median and spread over repeats after one warm-up batch. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_training import sts_dev

from gem_adapter import GEMModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pooling", default="gem")
    args = parser.parse_args()

    left, right, _ = sts_dev()
    sentences = (left + right)[: args.n]
    model = GEMModel.from_pretrained(args.base, adapter=args.adapter)
    model.encode(sentences[: args.batch_size], batch_size=args.batch_size)  # warm-up
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.encode(sentences, batch_size=args.batch_size, pooling=args.pooling)
        rates.append(len(sentences) / (time.perf_counter() - start))
    tokens = sum(len(model.tokenizer(s).input_ids) for s in sentences) / len(sentences)
    print(
        f"{len(sentences)} sentences (mean {tokens:.1f} tokens), batch {args.batch_size}, pooling {args.pooling}: "
        f"median {statistics.median(rates):.1f} sentences/s (min {min(rates):.1f}, max {max(rates):.1f}, "
        f"{args.repeats} repeats, torch threads {__import__('torch').get_num_threads()})"
    )


if __name__ == "__main__":
    main()
