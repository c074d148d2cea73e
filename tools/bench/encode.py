"""Sentences/s: ``GEMModel.encode`` (GEM pooling, and mean pooling) vs sentence-transformers with the
same backbone and mean pooling, same texts and batch size.
"""

from __future__ import annotations

import json
import statistics

import torch

from .timing import alternate, ratio, seconds, sentences, stats


def bench_encode(args, results: dict) -> None:
    from sentence_transformers import SentenceTransformer, models

    from gem_adapter import GEMModel
    from gem_adapter.hub import resolve_base

    texts = sentences(args.encode_texts)
    gem = GEMModel.from_pretrained(args.base, adapter=None, dtype=torch.float32)  # the same dtype as the other side
    model_kwargs = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    inferred = models.Transformer(resolve_base(args.base), model_kwargs=model_kwargs)
    # sentence-transformers 6 renders plain strings through the tokenizer's chat template when
    # there is one (SmolLM2-Instruct has), which embeds several times more tokens; pinning the module
    # to its text modality makes both sides embed the same token sequences.
    backbone = models.Transformer(resolve_base(args.base), max_seq_length=gem.config.max_length, model_kwargs=model_kwargs,
                                  modality_config={"text": inferred.modality_config["text"]},
                                  module_output_name=inferred.module_output_name)
    del inferred
    if backbone.tokenizer.pad_token is None:
        backbone.tokenizer.pad_token = backbone.tokenizer.eos_token
    st = SentenceTransformer(modules=[backbone, models.Pooling(gem.hidden_size, "mean")], device="cpu")
    batch = args.encode_batch
    for warm in (lambda: gem.encode(texts[:batch], batch_size=batch), lambda: st.encode(texts[:batch], batch_size=batch)):
        warm()
    candidates = {
        "sentence_transformers_mean": lambda: seconds(lambda: st.encode(texts, batch_size=batch)),
        "gem_encode_gem": lambda: seconds(lambda: gem.encode(texts, batch_size=batch, show_progress_bar=False)),
        "gem_encode_mean": lambda: seconds(lambda: gem.encode(texts, batch_size=batch, pooling="mean", show_progress_bar=False)),
    }
    measured = alternate(candidates, args.repeats)
    rates = {name: [len(texts) / s for s in values] for name, values in measured.items()}
    reference = statistics.median(rates["sentence_transformers_mean"])
    results["encode"] = {
        "texts": len(texts), "batch": batch, "sentences_per_s": {name: stats(v) for name, v in rates.items()},
        "gem_over_st": ratio(statistics.median(rates["gem_encode_gem"]), reference),
        "gem_mean_over_st": ratio(statistics.median(rates["gem_encode_mean"]), reference),
    }
    print(json.dumps(results["encode"]), flush=True)
