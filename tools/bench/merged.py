"""Encode and generate speed of the merged checkpoint vs base + adapter vs the plain base (needs
``--adapter``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from .timing import alternate, ratio, seconds, sentences, stats


def bench_merged(args, results: dict) -> None:
    from gem_adapter import GEMModel
    from gem_adapter.adapters import merge

    if args.adapter is None:
        results["merged"] = {"skipped": "no --adapter given"}
        return
    merged_dir = Path(tempfile.mkdtemp(prefix="gem-bench-merged-")) / "merged"
    merge(args.base, args.adapter, merged_dir)
    models = {
        "base": GEMModel.from_pretrained(args.base, adapter=None),
        "adapter_unfused": GEMModel.from_pretrained(args.base, adapter=args.adapter, fuse=False),
        "adapter_fused": GEMModel.from_pretrained(args.base, adapter=args.adapter),  # the default
        "merged": GEMModel.from_pretrained(merged_dir),
    }
    texts = sentences(args.encode_texts)
    template = models["adapter_fused"].config.template  # every row encodes the same token sequences
    prompts = ["The capital of France is", "In 1905, Albert Einstein published", "A good way to learn a language is",
               "The recipe calls for"]

    def encode(model: GEMModel) -> float:
        return len(texts) / seconds(lambda: model.encode(texts, batch_size=args.encode_batch, template=template,
                                                          show_progress_bar=False))

    def generate(model: GEMModel) -> float:
        new = args.generate_tokens
        spent = seconds(lambda: model.generate(prompts, max_new_tokens=new, min_new_tokens=new, do_sample=False))
        return len(prompts) * new / spent

    for model in models.values():
        model.encode(texts[:8], template=template)
    enc = alternate({name: (lambda m=m: encode(m)) for name, m in models.items()}, args.repeats)
    gen = alternate({name: (lambda m=m: generate(m)) for name, m in models.items()}, args.repeats)
    med = lambda table, name: statistics.median(table[name])  # noqa: E731
    results["merged"] = {
        "adapter": str(args.adapter), "texts": len(texts), "template": template,
        "encode_sentences_per_s": {n: stats(v) for n, v in enc.items()},
        "generate_tokens_per_s": {n: stats(v) for n, v in gen.items()},
        "generate_setup": f"{len(prompts)} prompts, greedy, {args.generate_tokens} new tokens each, batched",
        **{f"{kind}_{name}_over_base": ratio(med(table, name), med(table, "base"))
           for kind, table in (("encode", enc), ("generate", gen)) for name in models if name != "base"},
    }
    print(json.dumps({k: v for k, v in results["merged"].items() if "over" in k}), flush=True)
