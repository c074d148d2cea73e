"""Peak resident memory (VmHWM, the high-water mark) of loading the model and encoding, 4-bit vs
float32, each in a fresh child process (a peak cannot be measured twice in one).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from .timing import ratio, sentences

# fp32; 4-bit quantised from the fp32 files at load (as before the NF4 cache); 4-bit from the cached NF4 copy
MEMORY_VARIANTS = ("fp32", "4bit-quantize-at-load", "4bit")


def memory_child(precision: str, base: str, n: int) -> None:
    """Run in a fresh process: load + encode, print peak RSS figures as JSON."""
    def peak_mb() -> float:
        # VmHWM belongs to this process image; ru_maxrss would carry the parent's peak over exec
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    from gem_adapter import GEMModel

    after_import = peak_mb()
    model = GEMModel.from_pretrained(base, adapter=None, load_in_4bit=precision != "fp32", cache_quantized=precision == "4bit")
    after_load = peak_mb()
    model.encode(sentences(n), batch_size=32, show_progress_bar=False)
    print(json.dumps({"precision": precision, "peak_mb_after_import": round(after_import, 1),
                      "peak_mb_after_load": round(after_load, 1), "peak_mb_after_encode": round(peak_mb(), 1),
                      "weights_mb": round(model.model.get_memory_footprint() / 2**20, 1)}))


def bench_memory(args, results: dict) -> None:
    def child(precision: str) -> dict:
        out = subprocess.run([sys.executable, str(Path(__file__).parent), "--memory-child", precision, "--base", args.base,
                              "--encode-texts", str(args.encode_texts)], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    child("4bit")  # fills the NF4 cache, so the "4bit" rows below load the cached copy
    rows: dict[str, list[dict]] = {}
    for _ in range(args.memory_repeats):
        for precision in MEMORY_VARIANTS:
            rows.setdefault(precision, []).append(child(precision))
    summary = {}
    for precision, runs in rows.items():
        summary[precision] = {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "precision"}
    fp32 = summary["fp32"]
    results["memory"] = {"runs": rows, "median": summary}
    for precision in MEMORY_VARIANTS[1:]:
        q4 = summary[precision]
        results["memory"][precision] = {
            "peak_rss_over_fp32": ratio(q4["peak_mb_after_encode"], fp32["peak_mb_after_encode"]),
            "peak_rss_above_import_over_fp32": ratio(q4["peak_mb_after_encode"] - q4["peak_mb_after_import"],
                                                     fp32["peak_mb_after_encode"] - fp32["peak_mb_after_import"]),
            "weights_over_fp32": ratio(q4["weights_mb"], fp32["weights_mb"]),
        }
    print(json.dumps({k: v for k, v in results["memory"].items() if k != "runs"}), flush=True)
