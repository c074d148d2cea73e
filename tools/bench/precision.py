"""bfloat16 vs float32 side by side in one process: matmul peak, encode, greedy generate and one
LoRA training step, each with achieved GFLOP/s and MFU against that dtype's own measured matmul
peak (the faster of ``a @ b`` and ``linear``, i.e. ``a @ b.T``, at 1024x1024).

FLOPs are estimates: 2 x parameters x tokens for a forward pass (parameters: the decoder blocks, plus
the output projection where logits are computed), x3 for a training step (forward + backward);
attention's sequence-length term is left out. The CPU's flags are recorded: without AMX-BF16 or
AVX512-BF16 torch emulates bfloat16 and it is expected to be slower than float32 there.
"""

from __future__ import annotations

import json
import statistics

import torch

from .timing import alternate, seconds, sentences, stats

DTYPES = ("float32", "bfloat16")
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
PROMPTS = ["The capital of France is", "In 1905, Albert Einstein published", "A good way to learn a language is",
           "The recipe calls for"]


LAYOUTS = {"a @ b": lambda a, b: a @ b, "linear (a @ b.T)": torch.nn.functional.linear}


def matmul_gflops(dtype: torch.dtype, size: int, iterations: int, layout: str, device: torch.device) -> float:
    """GFLOP/s of ``iterations`` products of two ``size`` x ``size`` matrices in ``dtype``.

    ``layout``: ``a @ b``, or ``linear (a @ b.T)``, the product ``nn.Linear`` computes. They can
    take different kernels: on a CPU without AVX512-BF16, torch's bfloat16 ``a @ b`` is ~10x
    slower than its bfloat16 ``linear``; the peak is the faster of the two.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    product = LAYOUTS[layout]
    product(a, b)  # warm-up: first-call dispatch and any weight packing
    spent = seconds(lambda: [product(a, b) for _ in range(iterations)])
    return 2 * size**3 * iterations / spent / 1e9


def profile_step(step, device: torch.device, top: int = 12) -> list[dict]:
    """The ``top`` operators of one training step by self time (torch.profiler), as rows."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:top]
    total = sum(getattr(e, key, 0) for e in prof.key_averages()) or 1
    return [{"op": e.key, "self_ms": round(getattr(e, key, 0) / 1000, 2), "share": round(getattr(e, key, 0) / total, 3),
             "calls": e.count} for e in events]


def parameter_counts(gem) -> tuple[int, int]:
    """(decoder-block parameters without the input embedding, output projection parameters)."""
    lm = gem._causal_lm
    embedding = lm.get_input_embeddings().weight
    decoder = sum(p.numel() for p in lm.get_decoder().parameters() if p is not embedding)
    return decoder, lm.get_output_embeddings().weight.numel()


def bench_precision(args, results: dict) -> None:
    from gem_adapter import GEMModel
    from gem_adapter.precision import cpu_flags, default_device, describe
    from gem_adapter.training.recipes import load_recipe
    from gem_adapter.training.run import build_peft_model, make_collator

    flags = cpu_flags()
    texts = sentences(args.precision_texts)
    size, iterations = args.precision_matmul_size, args.precision_matmul_iterations
    dtypes = {name: getattr(torch, name) for name in DTYPES}
    device = torch.device(args.precision_device) if args.precision_device else default_device()

    matmul = alternate({(name, layout): (lambda d=d, layout=layout: matmul_gflops(d, size, iterations, layout, device))
                        for name, d in dtypes.items() for layout in LAYOUTS}, args.repeats)
    peak_median = {name: max(statistics.median(matmul[name, layout]) for layout in LAYOUTS) for name in DTYPES}

    models = {name: GEMModel.from_pretrained(args.base, adapter=None, dtype=name, device=device) for name in DTYPES}
    any_model = models["float32"]
    n_decoder, n_head = parameter_counts(any_model)
    gem_tokens = len(any_model.gem_token_ids)
    encode_tokens = sum(len(ids) + gem_tokens for ids in any_model.tokenizer(texts)["input_ids"])
    prompt_tokens = sum(len(ids) for ids in any_model.tokenizer(PROMPTS)["input_ids"])
    new_tokens = args.generate_tokens * len(PROMPTS)
    encode_flops = 2 * n_decoder * encode_tokens
    # prefill + decode through the blocks; logits for the generated positions only
    generate_flops = 2 * n_decoder * (prompt_tokens + new_tokens) + 2 * n_head * new_tokens

    def encode(model) -> float:
        return seconds(lambda: model.encode(texts, batch_size=args.encode_batch, show_progress_bar=False))

    def generate(model) -> float:
        new = args.generate_tokens
        return seconds(lambda: model.generate(PROMPTS, max_new_tokens=new, min_new_tokens=new, do_sample=False))

    for model in models.values():
        model.encode(texts[:4])
        model.generate(PROMPTS[:1], max_new_tokens=2, do_sample=False)
    encode_s = alternate({n: (lambda m=m: encode(m)) for n, m in models.items()}, args.repeats)
    generate_s = alternate({n: (lambda m=m: generate(m)) for n, m in models.items()}, args.repeats)
    del models

    # One LoRA training step: GEM batch -> forward under the GEM mask -> float32 cross entropy ->
    # backward -> AdamW over the trainable (float32) LoRA and GEM-row parameters.
    steppers, profiles, train_tokens = {}, {}, 0
    for name in DTYPES:
        config = load_recipe(args.recipe, {"base_model": args.base, "output_dir": "unused", "base_dtype": name,
                                           "bf16": False, "report_to": "none", "contrastive_weight": 0.0,
                                           "use_cpu": device.type == "cpu"})
        gem = build_peft_model(config)
        gem.model.to(device)
        gem.model.train()
        ids = [row[: config.max_chunk_tokens] for row in gem.tokenizer(texts[: args.precision_train_batch])["input_ids"]]
        batch = make_collator(config, gem)([{"input_ids": row, "index": i} for i, row in enumerate(ids)])
        batch = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
        train_tokens = int((batch["segment_ids"] != 0).sum())
        optimizer = torch.optim.AdamW([p for p in gem.model.parameters() if p.requires_grad], lr=1e-4)

        def step(gem=gem, batch=batch, optimizer=optimizer) -> float:
            def run() -> None:
                logits = gem(batch["input_ids"], batch["segment_ids"], use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                                         batch["labels"][:, 1:].flatten(), ignore_index=-100)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return seconds(run)

        step()  # warm-up: optimizer state, first-call dispatch
        steppers[name] = step
        if args.precision_profile:
            profiles[name] = profile_step(step, device)
    train_s = alternate(steppers, args.repeats)
    train_flops = 3 * 2 * (n_decoder + n_head) * train_tokens
    del steppers

    rows = []
    for name in DTYPES:
        def row(kind: str, unit: str, amount: float, flops: float, times: list[float], name: str = name) -> dict:
            rate = [amount / s for s in times]
            achieved = flops / statistics.median(times) / 1e9
            return {"dtype": name, "workload": kind, "unit": unit, "rate": stats(rate), "gflops": round(achieved, 2),
                    "mfu": round(achieved / peak_median[name], 3)}
        for layout in LAYOUTS:
            median = statistics.median(matmul[name, layout])
            rows.append({"dtype": name, "workload": f"matmul {size}x{size} {layout}", "unit": "GFLOP/s",
                         "rate": stats(matmul[name, layout]), "gflops": round(median, 2),
                         "mfu": round(median / peak_median[name], 3)})
        rows += [
            row("encode", "sentences/s", len(texts), encode_flops, encode_s[name]),
            row("generate (greedy)", "tokens/s", new_tokens, generate_flops, generate_s[name]),
            row("LoRA train step", "steps/s", 1, train_flops, train_s[name]),
        ]
    results["precision"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_flags": {flag: flag in flags for flag in FLAGS_OF_INTEREST},
        "auto": describe(device),
        "train_step_profile": profiles,
        "setup": (f"{len(texts)} STSB dev sentences ({encode_tokens} tokens, GEM tokens included) encoded in batches of "
                  f"{args.encode_batch}; {len(PROMPTS)} prompts x {args.generate_tokens} greedy new tokens; one training "
                  f"step on {args.precision_train_batch} chunks ({train_tokens} tokens), recipe {args.recipe} LoRA, AdamW; "
                  f"matmul {iterations} products per repeat; decoder parameters {n_decoder:,}, output projection {n_head:,}"),
        "rows": rows,
        "bf16_over_fp32": {r32["workload"]: round(r16["rate"]["median"] / r32["rate"]["median"], 3)
                           for r32, r16 in zip([r for r in rows if r["dtype"] == "float32"],
                                               [r for r in rows if r["dtype"] == "bfloat16"])},
    }
    print(json.dumps({k: results["precision"][k] for k in ("cpu_flags", "auto", "bf16_over_fp32")}), flush=True)
