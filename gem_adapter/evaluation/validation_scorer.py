"""Scoring one model on a slice of the validation suite, without a run folder: for checkpoint selection.

``ValidationScorer`` loads the validation tasks once (the ``validation`` suite's seeded
subsets, capped at ``limit`` items per task) and scores any model on them each time it is
called: a ``GEMModel`` (its GEM pooling and the adapter's template, as ``gem eval``'s GEM row),
an mteb encoder, or anything whose ``encode(list_of_texts)`` returns one vector per text.
It returns ``{"scores": {task: main score x100}, "ood_average", "family_averages",
"in_domain_tasks"}`` and, given ``out_dir``, also writes it there as ``validation_scores.json``.
Nothing is cached between calls: the model is expected to change (a training run scores it
at every evaluation step). Every call starts the tasks' random draws afresh (mteb's clustering
keeps its generator on the task), so the same model gets the same scores. mteb's evaluators
reseed the global generators (``random``, numpy, torch); a caller that must not see that
(training) saves and restores them around the call.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import GEMError
from .runner import check_data, evaluate_mteb
from .suites import load_suite_task, split_tasks, suite_plan
from .tasks import resolve_data_dir
from .validation import ood_scores

SCORES_FILE = "validation_scores.json"


class ValidationScorer:
    """The validation tasks, loaded once; ``scorer(model)`` scores a model on them.

    ``tasks``: names from the validation suite (default all ten); ``in_domain``: tasks whose
    train split the model trained on (left out of the OOD average, as ``gem eval`` does from
    ``train_splits_used``); ``suite``: ``validation`` (quick sizes) or ``validation-full``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        tasks: Sequence[str] | None = None,
        limit: int | None = None,
        seed: int = 0,
        in_domain: Sequence[str] = (),
        suite: str = "validation",
        batch_size: int = 32,
    ) -> None:
        self.plan = suite_plan(suite, limit)
        if not self.plan.out_of_domain:
            raise GEMError(f"suite {suite!r} is not a validation suite; use validation or validation-full")
        self.tasks, _ = split_tasks(tasks, self.plan)
        directory = resolve_data_dir(data_dir)
        check_data(self.tasks, [], directory)
        self.in_domain = [task for task in self.tasks if task in set(in_domain)]
        self.batch_size = int(batch_size)
        self.loaded = [load_suite_task(name, directory, self.plan, seed=seed) for name in self.tasks]
        self.notes = {item.name: item.note for item in self.loaded}

    def __call__(self, model, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
        """Score ``model``; with ``out_dir``, also write ``validation_scores.json`` there."""
        encoder = as_encoder(model, max_length=self.plan.embed_max_tokens)
        for item in self.loaded:  # what mteb's AbsTask.__init__ draws from (clustering's subsamples)
            item.task.rng_state, item.task.np_rng = random.Random(item.task.seed), np.random.default_rng(item.task.seed)
        result = evaluate_mteb(encoder, self.loaded, batch_size=self.batch_size, show_progress=False)
        scores = {tr.task_name: 100.0 * float(tr.get_score()) for tr in result.task_results}
        scores = {task: scores[task] for task in self.tasks}
        outcome = {"scores": scores, **ood_scores(scores, self.in_domain), "in_domain_tasks": list(self.in_domain)}
        if out_dir is not None:
            with atomic_file(Path(out_dir) / SCORES_FILE) as handle:
                handle.write(json.dumps({**outcome, "suite": self.plan.name, "notes": self.notes}, indent=2))
        return outcome


def score_validation(model, data_dir: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """``ValidationScorer(data_dir, **options)(model)``, for one model (``out_dir`` goes to the call)."""
    out_dir = options.pop("out_dir", None)
    return ValidationScorer(data_dir, **options)(model, out_dir=out_dir)


def as_encoder(model, *, max_length: int | None = None):
    """An mteb encoder for ``model``: itself if it is one, a ``GEMEncoder`` (GEM pooling) for a
    ``GEMModel``, else ``PlainEncoder`` around its ``encode``."""
    if hasattr(model, "mteb_model_meta"):
        return model
    if hasattr(model, "gem_token_ids") and hasattr(model, "encode"):
        from .encoder import GEMEncoder

        return GEMEncoder(model, name="gem-adapter/validation", pooling="gem", max_length=max_length,
                          show_progress_bar=False)
    if callable(getattr(model, "encode", None)):
        return PlainEncoder(model)
    raise GEMError(f"cannot score {type(model).__name__}: give a GEMModel, an mteb encoder or an object with "
                   "encode(list_of_texts) -> one vector per text")


class PlainEncoder:
    """Any ``encode(texts) -> (n, d)`` model seen by mteb as a cosine-similarity encoder."""

    def __init__(self, model, name: str = "gem-adapter/validation-model") -> None:
        self.model, self.name, self._meta, self._dim = model, name, None, None

    @property
    def mteb_model_meta(self):
        """mteb's ``ModelMeta`` for this model (cosine similarity)."""
        if self._meta is None:
            from mteb.models.model_meta import ModelMeta, ScoringFunction

            self._meta = ModelMeta.create_empty(overwrites={
                "name": self.name, "revision": "local", "similarity_fn_name": ScoringFunction.COSINE,
                "embed_dim": self._dim, "framework": ["PyTorch"], "languages": ["eng-Latn"]})
        return self._meta

    def encode(self, inputs, **kwargs: Any) -> np.ndarray:
        """Embed every text of an mteb dataloader."""
        from .encoder import texts_from_dataloader

        texts = texts_from_dataloader(inputs)
        vectors = np.asarray(self.model.encode(texts), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise GEMError(f"{type(self.model).__name__}.encode returned shape {vectors.shape} for {len(texts)} texts")
        self._dim = vectors.shape[1]
        return vectors

    def similarity(self, embeddings1, embeddings2):
        """Cosine similarity matrix (mteb's implementation)."""
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        """Cosine similarity of row i with row i (mteb's implementation)."""
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)
