"""``train(config)``: the whole GEM training job, from corpus to adapter folder.

Order matters for the user: the output folder and the corpus are checked before any model
is loaded, so a typo costs seconds, not a model load. The final adapter files are written
to a temporary folder and renamed into the output folder one by one, ``gem_config.json``
last: ``GEMModel`` refuses a folder without it, so a half-written adapter is never loaded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import GEMError
from .distill import teacher_location
from .distributed import release_at_exit
from .pairs import count_by_source, train_splits_used
from .recipes import RESOLVED_NAME, save_resolved
from .selection import default_scorer, selection_summary, validation_hook
from .trainer import (
    LOSS_LOG,
    SUMMARY,
    EpochSetter,
    GEMTrainer,
    GEMTrainingConfig,
    LossLogger,
    complete_checkpoints,
    write_adapter,
)

ADAPTER_FILES_LAST = "gem_config.json"


def prepare_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Refuse a used folder unless asked; return the checkpoint to resume from, if any."""
    used = output_dir.exists() and any(output_dir.iterdir())
    if resume:
        checkpoints = complete_checkpoints(output_dir)
        if not checkpoints:
            raise GEMError(f"--resume: {output_dir} holds no complete checkpoint to resume from")
        return checkpoints[-1]
    if used:
        if not overwrite:
            raise GEMError(f"output folder {output_dir} exists and is not empty; pass --resume to continue it or --overwrite to replace it")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return None


def load_chunks(config: GEMTrainingConfig, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Corpus -> (train chunks, held-out chunks), seeded; errors name the fix."""
    from .data import make_chunks, read_texts, train_eval_split

    if not config.data:
        raise GEMError("no training data: set `data` in the recipe or pass --data PATH")
    texts = read_texts(config.data, config.data_field)
    random.Random(config.seed).shuffle(texts)
    wanted = None if config.max_train_chunks is None else config.max_train_chunks + config.eval_chunks
    chunks = make_chunks(texts, tokenizer, config.chunk_unit, config.min_chunk_tokens, config.max_chunk_tokens, limit=wanted)
    needed = config.eval_chunks + config.per_device_train_batch_size
    if len(chunks) < needed:
        raise GEMError(
            f"corpus {config.data} gives {len(chunks)} chunks of >= {config.min_chunk_tokens} tokens, "
            f"fewer than eval_chunks + one batch ({needed}); add text or lower min_chunk_tokens / eval_chunks"
        )
    return train_eval_split(chunks, config.eval_chunks, config.seed, config.max_train_chunks)


def load_training_pairs(config: GEMTrainingConfig) -> list[dict[str, str]]:
    """The supervised pairs of ``pairs_data`` (a file, or a data folder built in memory); [] when off."""
    from .pairs import load_pairs

    if not config.pairs_data or (config.pairs_weight == 0 and not config.distills_pairs()):
        return []
    pairs = load_pairs(config.pairs_data, seed=config.seed, sources=config.pairs_sources)
    if len(pairs) < 2:
        raise GEMError(f"pairs_data {config.pairs_data} holds {len(pairs)} pair; in-batch negatives need at least 2")
    return pairs


def tokenize_pairs(pairs: list[dict[str, str]], tokenizer, max_tokens: int) -> list[dict]:
    """Pairs as token ids (texts cut at ``max_tokens``) with a ``group``: the label, else the anchor."""
    def encode(texts: list[str]) -> list[list[int]]:
        return [ids[:max_tokens] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    anchors = encode([p["anchor"] for p in pairs])
    positives = encode([p["positive"] for p in pairs])
    negatives = iter(encode([p["negative"] for p in pairs if p.get("negative")]))
    return [
        {"anchor": anchor, "positive": positive, "negative": next(negatives) if pair.get("negative") else None,
         "group": f"label:{pair['label']}" if pair.get("label") else f"anchor:{pair['anchor']}"}
        for pair, anchor, positive in zip(pairs, anchors, positives)
    ]


def check_matryoshka_fits(config: GEMTrainingConfig, base_path: str) -> None:
    """``matryoshka_dims`` against the base's hidden size, read from its config before any weight loads."""
    if not config.matryoshka_dims:
        return
    from transformers import AutoConfig

    from ..config import check_matryoshka_dims
    from ..errors import GEMConfigError

    try:
        check_matryoshka_dims(config.matryoshka_dims, getattr(AutoConfig.from_pretrained(base_path), "hidden_size", None))
    except ValueError as exc:
        raise GEMConfigError(str(exc)) from None


def build_peft_model(config: GEMTrainingConfig):
    """Base model with GEM tokens, wrapped in LoRA with trainable GEM rows only (both float32)."""
    from .. import quiet

    quiet.import_peft(config.load_in_4bit)  # bitsandbytes only for 4-bit (quiet.py)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed

    from .. import scope
    from ..model import GEMModel

    gem = GEMModel.from_pretrained(
        config.base_model, load_in_4bit=config.load_in_4bit, compute_dtype=config.bnb_compute_dtype,
        dtype=base_dtype(config), config=config.gem_config(),
    )
    model = gem.model
    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(config.gradient_checkpointing))
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules, task_type="CAUSAL_LM",
        # Only the GEM rows of the embedding train (not the matrix, not modules_to_save);
        # PEFT keeps a tied output matrix consistent with them.
        trainable_token_indices=list(gem.gem_token_ids),
    )
    set_seed(config.seed)  # LoRA's A matrices are drawn here: same seed, same adapter
    with quiet.peft_calls():
        peft_model = get_peft_model(model, lora)
    trainable_in_float32(peft_model)
    scope.install(peft_model, config.adapter_scope)
    gem.model = peft_model
    return gem


def base_dtype(config: GEMTrainingConfig):
    """The dtype the frozen base loads in: ``base_dtype`` resolved for the training device.

    None for a 4-bit base (its matmuls run in ``bnb_compute_dtype``). ``auto`` is bfloat16
    where the device computes it natively (``precision.resolve_dtype``) and also when
    ``bf16`` mixed precision is switched on, as before ``base_dtype`` existed.
    """
    import torch

    from ..precision import default_device, resolve_dtype

    if config.load_in_4bit:
        return None
    if config.base_dtype == "auto" and config.bf16:
        return torch.bfloat16
    return resolve_dtype(config.base_dtype, "cpu" if config.use_cpu else default_device())


def trainable_in_float32(model) -> int:
    """Cast every trainable parameter (LoRA matrices, the GEM rows) to float32; return their count.

    The frozen base may be bfloat16 or float16; the weights the optimiser updates stay
    float32, so small updates are not rounded away and the saved adapter is float32.
    """
    import torch

    count = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
            count += 1
    return count


def train(
    config: GEMTrainingConfig, resume: bool = False, overwrite: bool = False, callbacks: list | None = None,
    validation_scorer=None,
) -> Path:
    """Run a GEM training job; return the output (adapter) folder.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (progress, early stop).
    ``validation_scorer``: with ``config.validation_eval``, what scores the model at each
    evaluation step, ``scorer(gem_model) -> {"scores", "ood_average", "family_averages"}``
    (default: ``evaluation.ValidationScorer`` as ``selection.default_scorer`` builds it).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    from ..hub import resolve_base

    output_dir = Path(config.output_dir)
    main_process = _launch_rank() == 0
    if main_process:
        checkpoint = prepare_output_dir(output_dir, resume, overwrite)
    else:  # another process of `accelerate launch`: the main one checks and clears the folder
        found = complete_checkpoints(output_dir) if resume else []
        checkpoint = found[-1] if found else None
    base_path = resolve_base(config.base_model)
    check_matryoshka_fits(config, base_path)
    if config.distill_weight > 0:  # a missing teacher or package fails here, before the corpus or the student loads
        teacher_location(config.distill_teacher)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    train_chunks, eval_chunks = load_chunks(config, tokenizer)
    pairs = load_training_pairs(config)
    pair_ids = tokenize_pairs(pairs, tokenizer, config.max_chunk_tokens)
    if config.validation_eval and validation_scorer is None:  # reads the validation data: before the model loads
        validation_scorer = default_scorer(config, train_splits_used(pairs) or [])
    started = time.time()

    gem = build_peft_model(config)
    collator = make_collator(config, gem, pair_ids)
    as_dataset = lambda chunks: Dataset.from_dict({"input_ids": chunks, "index": list(range(len(chunks)))})  # noqa: E731
    trainer = GEMTrainer(
        model=gem.model,
        args=config,
        train_dataset=as_dataset(train_chunks),
        eval_dataset=as_dataset(eval_chunks) if eval_chunks else None,
        data_collator=collator,
        processing_class=gem.tokenizer,
        callbacks=[EpochSetter(collator), LossLogger(output_dir), *(callbacks or [])],
        gem_token_ids=gem.gem_token_ids,
        gem_config=gem.config,
        validation_hook=validation_hook(validation_scorer, gem) if config.validation_eval else None,
    )
    if main_process:
        if checkpoint is not None:
            _truncate_log(output_dir / LOSS_LOG, int(checkpoint.name.split("-")[-1]))
        else:
            (output_dir / LOSS_LOG).unlink(missing_ok=True)
        save_resolved(config, output_dir / RESOLVED_NAME)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    final_eval = {}
    if eval_chunks:
        at_end = [r for r in trainer.state.log_history if "eval_loss" in r and r.get("step") == result.global_step]
        final_eval = at_end[-1] if at_end else trainer.evaluate()  # no second pass over the same step

    tokens_seen = _summed_over_processes(trainer, trainer.train_tokens_seen)
    release_at_exit()
    if not trainer.is_world_process_zero():
        trainer.accelerator.wait_for_everyone()  # returns once the main process has written the adapter
        return output_dir  # one process writes the adapter and the summary
    save_adapter(gem, output_dir)
    elapsed = time.time() - started
    tokens = sum(len(c) for c in train_chunks)
    summary = {
        "train_runtime_s": round(elapsed, 1),
        "global_step": result.global_step,
        "train_loss": result.training_loss,
        "final_eval": final_eval,
        "train_chunks": len(train_chunks),
        "eval_chunks": len(eval_chunks),
        "train_tokens_per_epoch": tokens,
        "train_tokens_seen": tokens_seen,
        "tokens_per_second": round(tokens_seen / max(result.metrics.get("train_runtime", elapsed), 1e-9), 1),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "train_splits_used": train_splits_used(pairs),
        "train_pairs": count_by_source(pairs),
        "distillation": distillation_summary(config, trainer.teacher),
    }
    if config.validation_eval:
        summary["validation"] = selection_summary(config, trainer.state)
    (output_dir / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    trainer.accelerator.wait_for_everyone()
    return output_dir


def distillation_summary(config: GEMTrainingConfig, teacher) -> dict | None:
    """What train_summary.json records about distillation: the teacher, the settings, the teacher's time; None when off."""
    if teacher is None:
        return None
    return {
        "teacher": teacher.describe(),
        "weight": config.distill_weight,
        "texts": config.distill_texts,
        "objective": config.distill_objective,
        "temperature": config.distill_temperature,
        "teacher_temperature": config.distill_teacher_temperature,
        "teacher_seconds": round(teacher.seconds, 1),  # this process's teacher passes, evaluation included
        "teacher_texts": teacher.texts_embedded,
    }


def _launch_rank() -> int:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (0 when run alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _summed_over_processes(trainer, value: int) -> int:
    """``value`` summed over the data-parallel processes (itself in a single process)."""
    if trainer.accelerator.num_processes == 1:
        return int(value)
    import torch

    total = trainer.accelerator.reduce(torch.tensor([int(value)], device=trainer.accelerator.device), reduction="sum")
    return int(total.item())


def save_adapter(gem, output_dir: Path) -> None:
    """Write the adapter into a staging folder, then rename its files into ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".adapter-"))
    try:
        write_adapter(gem.model, gem.tokenizer, gem.config, staging)
        names = sorted(p.name for p in staging.iterdir())
        names.sort(key=lambda name: name == ADAPTER_FILES_LAST)  # the marker goes last
        (output_dir / ADAPTER_FILES_LAST).unlink(missing_ok=True)
        for name in names:
            target = output_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(staging / name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_collator(config: GEMTrainingConfig, gem, pairs: list[dict] | None = None):
    """The GEM collator for this config and loaded model (GEM ids, template, padding).

    ``pairs``: supervised pairs as token ids (``tokenize_pairs``), drawn into every batch.
    """
    from .collator import GEMCollator, TextDecoder
    from ..tokens import leading_special_ids

    head, tail = gem.template_ids(config.embed_template)
    return GEMCollator(
        gem_token_ids=gem.gem_token_ids,
        pad_token_id=gem.tokenizer.pad_token_id,
        gem_fraction=config.gem_fraction,
        min_prefix_tokens=config.min_prefix_tokens,
        min_suffix_tokens=config.min_suffix_tokens,
        max_length=config.max_chunk_tokens + len(gem.gem_token_ids) + len(head) + len(tail),
        seed=config.seed,
        contrastive=config.contrastive_weight > 0 or config.distills_views(),
        view_mode=config.contrastive_view_mode,
        view_head_ids=leading_special_ids(gem.tokenizer) + head,
        view_tail_ids=tail,
        pairs=list(pairs or []),
        pairs_per_batch=config.pairs_per_batch if pairs else 0,
        decode=TextDecoder(gem.tokenizer) if config.distill_weight > 0 else None,  # the teacher reads strings
    )


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log records a killed run wrote after the checkpoint it resumes from."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))
