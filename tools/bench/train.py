"""Seconds per optimizer step: GEM training (mixed NTP through 4D GEM masks, GEMTrainer) vs plain
LoRA causal-LM training (trl.SFTTrainer), same model, LoRA, batch, chunks, precision, optimizer and
no activation checkpointing; fp32 and 4-bit NF4. The GEM row with the contrastive term is reported
too (it runs two more forward passes by design, so it is not part of the overhead ratio).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from .timing import alternate, ratio, stats


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
    from gem_adapter.training.recipes import load_recipe
    from gem_adapter.training.run import build_peft_model, load_chunks, make_collator
    from gem_adapter.training.trainer import EpochSetter, GEMTrainer

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
