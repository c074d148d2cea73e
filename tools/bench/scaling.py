"""Forward+backward time of a GEM training batch, encode time, and the cost of building the mask
alone, for sequence lengths 64..512 and for k = 1, 2, 4.
"""

from __future__ import annotations

import json
import statistics

import torch

from .timing import alternate, long_text, ratio, seconds, stats


def bench_scaling(args, results: dict) -> None:
    from gem_adapter import GEMConfig, GEMModel
    from gem_adapter.masking import attention_inputs
    from gem_adapter.training.collator import GEMCollator

    text = long_text()
    rows = []
    models: dict[int, GEMModel] = {}
    for k in args.scaling_k:
        models[k] = GEMModel.from_pretrained(args.base, config=GEMConfig(num_gem_tokens=k))
    ids = models[args.scaling_k[0]].tokenizer(text, add_special_tokens=False)["input_ids"]
    batch = args.scaling_batch
    cases = [(length, args.scaling_k[0]) for length in args.scaling_lengths]
    cases += [(args.scaling_k_length, k) for k in args.scaling_k[1:]]
    for gem in models.values():
        gem.model.requires_grad_(False)
        gem.model.get_decoder().layers[0].input_layernorm.weight.requires_grad_(True)
    for length, k in cases:
        gem = models[k]
        causal = gem.model
        collator = GEMCollator(gem_token_ids=gem.gem_token_ids, pad_token_id=gem.tokenizer.pad_token_id, gem_fraction=1.0,
                               min_prefix_tokens=4, min_suffix_tokens=4, max_length=length, seed=0)
        chunks = [ids[i * length: (i + 1) * length - k] for i in range(batch)]
        sample = collator([{"input_ids": c, "index": i} for i, c in enumerate(chunks)])
        segments = sample["segment_ids"]
        implementation = causal.config._attn_implementation
        texts = [gem.tokenizer.decode(ids[i * length: (i + 1) * length]) for i in range(batch)]

        def mask_only() -> float:
            return seconds(lambda: attention_inputs(segments, implementation, causal.dtype))

        def forward() -> float:
            with torch.inference_mode():
                return seconds(lambda: gem.forward(sample["input_ids"], segments))

        def forward_backward() -> float:
            # Gradients flow through every layer to the first norm's weight only: the cost of
            # a LoRA step (activation gradients everywhere, tiny weight gradients) without LoRA.
            causal.zero_grad(set_to_none=True)

            def step():
                logits = gem.forward(sample["input_ids"], segments).logits
                targets = sample["labels"][:, 1:]
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                         ignore_index=-100)
                loss.backward()
            return seconds(step)

        def encode() -> float:
            return seconds(lambda: gem.encode(texts, batch_size=batch, max_length=length, show_progress_bar=False))

        forward()
        measured = alternate({"mask": mask_only, "forward": forward, "forward_backward": forward_backward,
                              "encode": encode}, args.repeats)
        med = {name: statistics.median(v) for name, v in measured.items()}
        row = {"seq_len": length, "k": k, "batch": batch, **{f"{n}_s": stats(v) for n, v in measured.items()},
               "mask_share_of_forward": ratio(med["mask"], med["forward"])}
        rows.append(row)
        print(json.dumps({"seq_len": length, "k": k, **{n: round(v, 4) for n, v in med.items()},
                          "mask_share": row["mask_share_of_forward"]}), flush=True)
    for model in models.values():
        model.model.zero_grad(set_to_none=True)
    results["scaling"] = {"rows": rows, "note": "training-shaped GEM batches (prefix, k GEM tokens, suffix) for forward,"
                          " forward+backward (gradients through every layer, as in a LoRA step, no optimizer) and mask;"
                          " encode of the same texts"}
