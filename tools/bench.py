"""Performance benchmark: GEM against the plain baselines, side by side in one process.

    python tools/bench.py --out bench                       # every section, CPU-sized defaults
    python tools/bench.py --sections encode,scaling --repeats 5
    python tools/bench.py --adapter runs/smollm2-135m-cpu   # adds merged vs adapter vs base

Sections (each comparison alternates its candidates repeat by repeat, so drift in the
machine's speed hits them alike; numbers are medians with min/max over repeats):

* ``train``   seconds per optimizer step: GEM training (mixed NTP through 4D GEM masks,
  GEMTrainer) vs plain LoRA causal-LM training (trl.SFTTrainer), same model, LoRA, batch,
  chunks, precision, optimizer and no activation checkpointing; fp32 and 4-bit NF4. The
  GEM row with the contrastive term is reported too (it runs two more forward passes by
  design, so it is not part of the overhead ratio).
* ``encode``  sentences/s: ``GEMModel.encode`` (GEM pooling, and mean pooling) vs
  sentence-transformers with the same backbone and mean pooling, same texts and batch size.
* ``memory``  peak resident memory (VmHWM, the high-water mark) of loading the model and encoding, 4-bit
  vs float32, each in a fresh child process (a peak cannot be measured twice in one).
* ``merged``  encode and generate speed of the merged checkpoint vs base + adapter vs the
  plain base (needs ``--adapter``).
* ``scaling`` forward+backward time of a GEM training batch, encode time, and the cost of
  building the mask alone, for sequence lengths 64..512 and for k = 1, 2, 4.

Writes ``bench.json`` and ``bench.md`` to ``--out``. A benchmark, not a test: nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_training import DATA, sts_dev
from transformers import TrainerCallback

SECTIONS = ("train", "encode", "memory", "merged", "scaling")
# fp32; 4-bit quantised from the fp32 files at load (as before the NF4 cache); 4-bit from the cached NF4 copy
MEMORY_VARIANTS = ("fp32", "4bit-quantize-at-load", "4bit")


# ---------------------------------------------------------------------------- helpers
def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def alternate(candidates: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[Any]]:
    """Run each candidate once per repeat, in turn; each returns its own measurement."""
    measured: dict[str, list[Any]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            measured[name].append(run())
    return measured


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def sentences(n: int) -> list[str]:
    left, right, _ = sts_dev()
    return (left + right)[:n]


def long_text() -> str:
    return (DATA / "lm" / "wikitext2" / "wiki.test.tokens").read_text(encoding="utf-8")[:200_000]


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


# ---------------------------------------------------------------------------- train
class StepClock(TrainerCallback):
    """Wall time between consecutive optimizer steps (data, forward, backward, optimizer)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.last = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def bench_train(args, results: dict) -> None:
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from gem_adapter.hub import resolve_base
    from gem_adapter.model import bnb_4bit_config
    from gem_adapter.recipes import load_recipe
    from gem_adapter.train import build_peft_model, load_chunks, make_collator
    from gem_adapter.training import EpochSetter, GEMTrainer

    steps = args.warmup_steps + args.train_steps
    workdir = Path(tempfile.mkdtemp(prefix="gem-bench-"))
    common = dict(per_device_train_batch_size=args.train_batch, learning_rate=2e-4, max_steps=steps, warmup_steps=0,
                  lr_scheduler_type="constant", logging_steps=10_000, save_strategy="no", eval_strategy="no",
                  report_to="none", disable_tqdm=True, activation_checkpointing=False, bf16=False, seed=0,
                  dataloader_num_workers=0)
    rows = []
    for four_bit in args.train_precisions:
        label = "4-bit NF4" if four_bit else "fp32"
        gem_config = load_recipe(args.recipe, {
            **common, "base_model": args.base, "output_dir": str(workdir / "gem"), "load_in_4bit": four_bit,
            "contrastive_weight": 0.0, "eval_chunks": 0, "max_train_chunks": args.train_batch * steps * 2})
        tokenizer = AutoTokenizer.from_pretrained(resolve_base(args.base))
        chunks, _ = load_chunks(gem_config, tokenizer)
        chunks = chunks[: args.train_batch * steps]
        tokens_per_step = sum(len(c) for c in chunks) / steps

        gem = build_peft_model(gem_config)
        collator = make_collator(gem_config, gem)
        dataset = Dataset.from_dict({"input_ids": chunks, "index": list(range(len(chunks)))})

        def gem_run(config=gem_config, gem=gem, collator=collator, dataset=dataset) -> list[float]:
            clock = StepClock()
            trainer = GEMTrainer(model=gem.model, args=config, train_dataset=dataset, data_collator=collator,
                                 processing_class=gem.tokenizer, callbacks=[EpochSetter(collator), clock],
                                 gem_token_ids=gem.gem_token_ids, gem_config=gem.config)
            trainer.train()
            return clock.times[args.warmup_steps:]

        contrastive_config = load_recipe(args.recipe, {
            **common, "base_model": args.base, "output_dir": str(workdir / "gem-c"), "load_in_4bit": four_bit,
            "eval_chunks": 0})
        contrastive_collator = make_collator(contrastive_config, gem)

        def contrastive_run(config=contrastive_config, gem=gem, collator=contrastive_collator, dataset=dataset):
            return gem_run(config, gem, collator, dataset)

        load = {"quantization_config": bnb_4bit_config(torch.float32), "device_map": {"": "cpu"}} if four_bit else {"dtype": torch.float32}
        plain_model = AutoModelForCausalLM.from_pretrained(resolve_base(args.base), attn_implementation="sdpa", **load)
        if four_bit:
            plain_model = prepare_model_for_kbit_training(plain_model, use_gradient_checkpointing=False)
        set_seed(0)
        plain_model = get_peft_model(plain_model, LoraConfig(
            r=gem_config.lora_r, lora_alpha=gem_config.lora_alpha, lora_dropout=gem_config.lora_dropout,
            target_modules=gem_config.lora_target_modules, task_type="CAUSAL_LM"))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        plain_config = SFTConfig(output_dir=str(workdir / "plain"), **common)
        plain_dataset = Dataset.from_dict({"input_ids": chunks})

        def plain_run() -> list[float]:
            clock = StepClock()
            trainer = SFTTrainer(model=plain_model, args=plain_config, train_dataset=plain_dataset,
                                 processing_class=tokenizer, callbacks=[clock])
            trainer.train()
            return clock.times[args.warmup_steps:]

        candidates = {"plain": plain_run, "gem": gem_run}
        if args.with_contrastive:
            candidates["gem_contrastive"] = contrastive_run
        per_step = {name: [t for run in runs for t in run] for name, runs in alternate(candidates, args.repeats).items()}
        medians = {name: statistics.median(values) for name, values in per_step.items()}
        row = {"precision": label, "tokens_per_step": round(tokens_per_step, 1),
               **{f"{name}_s_per_step": stats(values) for name, values in per_step.items()},
               "gem_over_plain": ratio(medians["gem"], medians["plain"])}
        if "gem_contrastive" in medians:
            row["gem_contrastive_over_plain"] = ratio(medians["gem_contrastive"], medians["plain"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    results["train"] = {"batch": args.train_batch, "measured_steps_per_run": args.train_steps,
                        "warmup_steps": args.warmup_steps, "recipe": args.recipe, "rows": rows}


# ---------------------------------------------------------------------------- encode
def bench_encode(args, results: dict) -> None:
    from sentence_transformers import SentenceTransformer, models

    from gem_adapter import GEMModel
    from gem_adapter.hub import resolve_base

    texts = sentences(args.encode_texts)
    gem = GEMModel.from_pretrained(args.base)
    model_kwargs = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    inferred = models.Transformer(resolve_base(args.base), model_kwargs=model_kwargs)
    # sentence-transformers 6 renders plain strings through the tokenizer's chat template when
    # there is one (SmolLM2-Instruct has), which embeds ~3.6x more tokens; pinning the module
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


# ---------------------------------------------------------------------------- memory
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
    model = GEMModel.from_pretrained(base, load_in_4bit=precision != "fp32", cache_quantized=precision == "4bit")
    after_load = peak_mb()
    model.encode(sentences(n), batch_size=32, show_progress_bar=False)
    print(json.dumps({"precision": precision, "peak_mb_after_import": round(after_import, 1),
                      "peak_mb_after_load": round(after_load, 1), "peak_mb_after_encode": round(peak_mb(), 1),
                      "weights_mb": round(model.model.get_memory_footprint() / 2**20, 1)}))


def bench_memory(args, results: dict) -> None:
    def child(precision: str) -> dict:
        out = subprocess.run([sys.executable, __file__, "--memory-child", precision, "--base", args.base,
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


# ---------------------------------------------------------------------------- merged
def bench_merged(args, results: dict) -> None:
    from gem_adapter import GEMModel
    from gem_adapter.adapters import merge

    if args.adapter is None:
        results["merged"] = {"skipped": "no --adapter given"}
        return
    merged_dir = Path(tempfile.mkdtemp(prefix="gem-bench-merged-")) / "merged"
    merge(args.base, args.adapter, merged_dir)
    models = {
        "base": GEMModel.from_pretrained(args.base),
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


# ---------------------------------------------------------------------------- scaling
def bench_scaling(args, results: dict) -> None:
    from gem_adapter import GEMConfig, GEMModel
    from gem_adapter.collator import GEMCollator
    from gem_adapter.masking import attention_inputs

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


# ---------------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    m = lambda s: f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"  # noqa: E731
    lines = [f"Machine: {results['machine']}; torch {results['torch']} ({results['threads']} threads); "
             f"repeats {results['repeats']}. Cells: median (min-max).", ""]
    if "train" in results:
        t = results["train"]
        lines += [f"### Training step (batch {t['batch']}, {t['measured_steps_per_run']} timed steps per run after "
                  f"{t['warmup_steps']} warm-up)", "",
                  "| precision | tokens/step | plain TRL SFT s/step | GEM s/step | GEM / plain | GEM+contrastive s/step | (GEM+c) / plain |",
                  "|---|---|---|---|---|---|---|"]
        for r in t["rows"]:
            c = r.get("gem_contrastive_s_per_step")
            lines.append(f"| {r['precision']} | {r['tokens_per_step']} | {m(r['plain_s_per_step'])} | {m(r['gem_s_per_step'])} | "
                         f"**{r['gem_over_plain']}** | {m(c) if c else ''} | {r.get('gem_contrastive_over_plain', '')} |")
        lines.append("")
    if "encode" in results:
        e = results["encode"]
        s = e["sentences_per_s"]
        lines += [f"### Embedding throughput ({e['texts']} STSB dev sentences, batch {e['batch']}, sentences/s)", "",
                  "| sentence-transformers mean | GEMModel.encode gem | GEMModel.encode mean | gem / ST | mean / ST |",
                  "|---|---|---|---|---|",
                  f"| {m(s['sentence_transformers_mean'])} | {m(s['gem_encode_gem'])} | {m(s['gem_encode_mean'])} | "
                  f"**{e['gem_over_st']}** | {e['gem_mean_over_st']} |", ""]
    if "memory" in results:
        mem = results["memory"]
        lines += ["### Memory (peak RSS = VmHWM, MB, a fresh process each; medians)", "",
                  "| variant | after import | after load | after encode | weights (get_memory_footprint) | peak / fp32 | "
                  "peak above import / fp32 | weights / fp32 |", "|---|---|---|---|---|---|---|---|"]
        for name, row in mem["median"].items():
            r = mem.get(name, {})
            lines.append(f"| {name} | {row['peak_mb_after_import']} | {row['peak_mb_after_load']} | {row['peak_mb_after_encode']} | "
                         f"{row['weights_mb']} | {r.get('peak_rss_over_fp32', 1.0)} | {r.get('peak_rss_above_import_over_fp32', 1.0)} | "
                         f"{r.get('weights_over_fp32', 1.0)} |")
        lines.append("")
    if "merged" in results and "skipped" not in results["merged"]:
        g = results["merged"]
        lines += [f"### Merged vs adapter vs base ({g['texts']} sentences encoded with the adapter's template; {g['generate_setup']})", "",
                  "| model | encode sentences/s | encode / base | generate tokens/s | generate / base |", "|---|---|---|---|---|"]
        for name in g["encode_sentences_per_s"]:
            lines.append(f"| {name} | {m(g['encode_sentences_per_s'][name])} | {g.get(f'encode_{name}_over_base', 1.0)} | "
                         f"{m(g['generate_tokens_per_s'][name])} | {g.get(f'generate_{name}_over_base', 1.0)} |")
        lines += ["", "adapter_unfused: PEFT LoRA layers run beside the base weights (before the speed work); "
                  "adapter_fused: GEMModel's default since, deltas folded into the weights at load.", ""]
    if "scaling" in results:
        lines += ["### Scaling (seconds per batch)", "", "| seq len | k | batch | mask | forward | forward+backward | encode | mask / forward |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["scaling"]["rows"]:
            lines.append(f"| {r['seq_len']} | {r['k']} | {r['batch']} | {m(r['mask_s'])} | {m(r['forward_s'])} | "
                         f"{m(r['forward_backward_s'])} | {m(r['encode_s'])} | {r['mask_share_of_forward']} |")
        lines += ["", results["scaling"]["note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--memory-child", choices=MEMORY_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        memory_child(args.memory_child, args.base, args.encode_texts)
        return
    args.train_precisions = [p.strip() == "4bit" for p in args.train_precision.split(",") if p.strip()]
    args.scaling_lengths = [int(v) for v in args.scaling_lengths.split(",")]
    args.scaling_k = [int(v) for v in args.scaling_k.split(",")]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")

    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
                     + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"),
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
                     "base": args.base, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    runners = {"train": bench_train, "encode": bench_encode, "memory": bench_memory, "merged": bench_merged,
               "scaling": bench_scaling}
    args.out.mkdir(parents=True, exist_ok=True)
    for name in sections:
        start = time.perf_counter()
        runners[name](args, results)
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
        # written after every section, so a long run that dies keeps what it measured
        (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "bench.md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
