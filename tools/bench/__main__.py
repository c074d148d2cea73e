"""``python tools/bench [options]``: run the chosen sections, write bench.json and bench.md (see ``__init__``)."""

from __future__ import annotations

import sys
from pathlib import Path

# Running the folder puts tools/bench itself on sys.path; the sections import as the package
# ``bench`` and read the shared data helpers from tools/bench_training.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import bench  # noqa: E402
from bench import SECTIONS, encode, memory, merged, precision, report, scaling, train  # noqa: E402
from gem_adapter.precision import describe_cpu  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=bench.__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--adapter", type=Path, default=None)
    parser.add_argument("--recipe", default="smollm2-135m-cpu")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--train-precision", default="fp32,4bit")
    parser.add_argument("--no-contrastive", dest="with_contrastive", action="store_false")
    parser.add_argument("--encode-texts", type=int, default=1000)
    parser.add_argument("--encode-batch", type=int, default=32)
    parser.add_argument("--memory-repeats", type=int, default=1)
    parser.add_argument("--generate-tokens", type=int, default=32)
    parser.add_argument("--scaling-lengths", default="64,128,256,512")
    parser.add_argument("--scaling-k", default="1,2,4")
    parser.add_argument("--scaling-k-length", type=int, default=128)
    parser.add_argument("--scaling-batch", type=int, default=4)
    parser.add_argument("--precision-texts", type=int, default=256, help="sentences encoded per precision run")
    parser.add_argument("--precision-train-batch", type=int, default=8, help="chunks in the precision training step")
    parser.add_argument("--precision-matmul-size", type=int, default=1024)
    parser.add_argument("--precision-matmul-iterations", type=int, default=20)
    parser.add_argument("--precision-device", default=None, help="cpu or cuda (default: cuda if there is one)")
    parser.add_argument("--precision-profile", action="store_true",
                        help="add torch.profiler's top operators of one training step per dtype")
    parser.add_argument("--memory-child", choices=memory.MEMORY_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        memory.memory_child(args.memory_child, args.base, args.encode_texts)
        return
    args.train_precisions = [p.strip() == "4bit" for p in args.train_precision.split(",") if p.strip()]
    args.scaling_lengths = [int(v) for v in args.scaling_lengths.split(",")]
    args.scaling_k = [int(v) for v in args.scaling_k.split(",")]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")

    results: dict = {"machine": describe_cpu()
                     + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
                     "base": args.base, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    runners = {"train": train.bench_train, "encode": encode.bench_encode, "memory": memory.bench_memory,
               "merged": merged.bench_merged, "scaling": scaling.bench_scaling,
               "precision": precision.bench_precision}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in sections:
        start = time.perf_counter()
        runners[name](args, results)
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
        # written after every section, so a long run that dies keeps what it measured
        (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "bench.md").write_text(report.markdown(results) + "\n")
    print(report.markdown(results))


if __name__ == "__main__":
    main()
