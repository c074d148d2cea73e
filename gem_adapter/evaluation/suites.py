"""The suites ``gem eval --suite`` runs: which tasks, and how much of each.

``quick`` and ``full`` are the project's suite (MTEB tasks on the benchmarks' test splits,
three of whose train splits the default recipe trains on, and the LM-preservation metrics).
``validation`` and ``validation-full`` are the out-of-domain validation: the sets of
``validation_tasks``, which no recipe may train on, plus STSBenchmark and SICK-R as a
similarity family (out-of-domain only for an adapter that did not train on them, see
``validation``); quick sizes are seeded subsets, ``validation-full`` scores every test item.
A task belongs to the suites that list it; ``split_tasks`` refuses one from another suite.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import GEMConfigError
from .lm import LM_TASKS, canonical_lm_task
from .tasks import MTEB_TASKS, TASK_FILES, LoadedTask, load_task
from .validation import VALIDATION_SUITE_TASKS
from .validation_tasks import (
    CR_FOLDS,
    VALIDATION_FILES,
    VALIDATION_TASKS,
    load_validation_task,
)

ALL_TASKS: tuple[str, ...] = MTEB_TASKS + LM_TASKS + VALIDATION_TASKS


@dataclass(frozen=True)
class Suite:
    """How much of each benchmark a suite runs (None: all of it), and which tasks it runs."""

    name: str
    sts_pairs: int | None = None
    banking_test: int | None = None
    banking_experiments: int | None = None
    clustering_texts: int | None = None
    clustering_runs: int | None = None
    scifact_queries: int | None = None
    scifact_corpus: int | None = None
    embed_max_tokens: int | None = None
    mmlu_subject_step: int = 1
    mmlu_subjects: int | None = None
    mmlu_per_subject: int | None = None
    mmlu_total: int | None = None
    arc: int | None = None
    hellaswag: int | None = None
    wikitext_tokens: int | None = None
    window: int = 512
    stride: int = 256
    # the validation sets (see validation_tasks.load_validation_task for what each cap counts)
    amazon_test: int | None = None
    tweeteval_test: int | None = None  # per subtask
    probe_runs: int | None = None  # logistic-regression runs of Amazon Counterfactual and TweetEval (MTEB: 10)
    probe_pool: int | None = None  # the train texts those runs draw from (per TweetEval subtask)
    review_sentences: int | None = None  # Customer Reviews: both of its tasks draw the same sentences
    review_clustering_runs: int | None = None
    twitter_pairs: int | None = None
    wikiqa_questions: int | None = None
    trecqa_questions: int | None = None
    nfcorpus_queries: int | None = None
    nfcorpus_corpus: int | None = None
    mteb_tasks: tuple[str, ...] = MTEB_TASKS
    lm_tasks: tuple[str, ...] = LM_TASKS
    out_of_domain: bool = False  # report the OOD average and the family averages (the validation suites)

    def capped(self, limit: int) -> Suite:
        """This suite with every item count at most ``limit`` (for smoke tests)."""
        def cap(value: int | None) -> int:
            return limit if value is None else min(value, limit)

        return replace(self, sts_pairs=cap(self.sts_pairs), banking_test=cap(self.banking_test),
                       banking_experiments=1, clustering_texts=cap(self.clustering_texts), clustering_runs=1,
                       scifact_queries=cap(self.scifact_queries),
                       scifact_corpus=cap(self.scifact_corpus) * 4, mmlu_subjects=cap(self.mmlu_subjects),
                       mmlu_per_subject=cap(self.mmlu_per_subject), mmlu_total=None, arc=cap(self.arc),
                       hellaswag=cap(self.hellaswag),
                       wikitext_tokens=min(self.wikitext_tokens or 10**9, 32 * limit),
                       window=min(self.window, 64), stride=min(self.stride, 32),
                       amazon_test=cap(self.amazon_test), tweeteval_test=cap(self.tweeteval_test), probe_runs=1,
                       probe_pool=cap(self.probe_pool) * 16,
                       # cross-validation needs a few sentences of each polarity in every training fold
                       review_sentences=max(cap(self.review_sentences), 2 * CR_FOLDS), review_clustering_runs=1,
                       twitter_pairs=cap(self.twitter_pairs), wikiqa_questions=cap(self.wikiqa_questions),
                       trecqa_questions=cap(self.trecqa_questions), nfcorpus_queries=cap(self.nfcorpus_queries),
                       nfcorpus_corpus=cap(self.nfcorpus_corpus) * 4)


SUITES: dict[str, Suite] = {
    # sized for <= 15 minutes with smollm2-135m on this project's 2-core CPU machine: with a
    # trained adapter (5 embedding rows, LM metrics for base and adapter) it took 14 min 9 s
    # wall on 2 free cores, process start included, before Banking77Clustering was added;
    # its 308 texts include Banking77Classification's 154 (same seeded stratified draw), which
    # each encoder embeds once, so it adds 154 short texts and 3 k-means runs per row
    # (estimated 15-20 s a row, ~1.5 min in all); without an adapter the LM metrics run once
    "quick": Suite("quick", sts_pairs=200, banking_test=154, banking_experiments=1, clustering_texts=308,
                   clustering_runs=3, scifact_queries=25, scifact_corpus=80, embed_max_tokens=128,
                   mmlu_subject_step=6, mmlu_per_subject=6, arc=100, hellaswag=40, wikitext_tokens=2048),
    # every embedding task whole, as MTEB scores it; the LM metrics sized so that a real change
    # shows: MMLU 1,400 of 14,042 test questions stratified by subject (binomial standard
    # error <= 1.3 points), HellaSwag 1,000 of 10,042 validation items, all 2,376 ARC-Easy
    # test questions and the whole WikiText-2 test file (README: time estimate)
    "full": Suite("full", mmlu_total=1400, hellaswag=1000),
    # sized for <= 7 minutes for the GEM row of smollm2-135m on 2 free CPU cores, as it is run for
    # every recipe (with --baselines-from, only that row): ~5,900 distinct texts, ~250k tokens with
    # the template and the GEM tokens, at the ~700 tokens (~17 short texts) a second that row
    # embeds in float32 on free cores (2026-12-04), plus ~40 s of probes, k-means and ranking.
    # NFCorpus (~135 tokens a document after the 128-token cut) is the costliest per text, hence
    # 15 queries over 300 documents. The Customer Reviews clustering reuses its classification's
    # sentences, so it costs only k-means. The decoder baselines without a template are ~40% faster.
    "validation": Suite("validation", sts_pairs=250, amazon_test=400, tweeteval_test=120, probe_runs=5,
                        probe_pool=2000, review_sentences=600, review_clustering_runs=3, twitter_pairs=600,
                        wikiqa_questions=40, trecqa_questions=30, nfcorpus_queries=15, nfcorpus_corpus=300,
                        embed_max_tokens=128, mteb_tasks=VALIDATION_SUITE_TASKS, lm_tasks=(), out_of_domain=True),
    # every test item of every set, no truncation, MTEB's 10 probe and k-means runs
    "validation-full": Suite("validation-full", mteb_tasks=VALIDATION_SUITE_TASKS, lm_tasks=(), out_of_domain=True),
}


def suite_plan(suite: str, limit: int | None = None) -> Suite:
    """The named suite, capped at ``limit`` items per task when given."""
    if suite not in SUITES:
        raise GEMConfigError(f"unknown suite {suite!r}; use one of {', '.join(SUITES)}")
    return SUITES[suite] if limit is None else SUITES[suite].capped(int(limit))


def split_tasks(tasks: Sequence[str] | None, plan: Suite | None = None) -> tuple[list[str], list[str]]:
    """Validated (MTEB task names, LM task names) of ``plan`` (default: quick), in its order."""
    plan = plan or SUITES["quick"]
    if tasks is None:
        return list(plan.mteb_tasks), list(plan.lm_tasks)
    known = plan.mteb_tasks + plan.lm_tasks
    mteb_tasks, lm_tasks = set(), set()
    for name in tasks:
        if not name.strip():
            continue
        found = next((task for task in plan.mteb_tasks if task.lower() == name.strip().lower()), None)
        if found is not None:
            mteb_tasks.add(found)
            continue
        try:
            lm_task = canonical_lm_task(name)
        except GEMConfigError:
            lm_task = None
        if lm_task is not None and lm_task in plan.lm_tasks:
            lm_tasks.add(lm_task)
            continue
        elsewhere = [other.name for other in SUITES.values()
                     if any(task.lower() == (lm_task or name.strip()).lower() for task in other.mteb_tasks + other.lm_tasks)]
        if elsewhere:
            raise GEMConfigError(f"task {name!r} is not in suite {plan.name!r}; it is in {', '.join(elsewhere)} "
                                 f"(--suite), or choose from {', '.join(known)}")
        raise GEMConfigError(f"unknown task {name!r}; choose from {', '.join(known)}")
    if not mteb_tasks and not lm_tasks:
        raise GEMConfigError(f"no task selected; choose from {', '.join(known)}")
    return [t for t in plan.mteb_tasks if t in mteb_tasks], [t for t in plan.lm_tasks if t in lm_tasks]


def task_files(name: str) -> tuple[str, ...]:
    """The files an MTEB or validation task reads, relative to the data directory."""
    return TASK_FILES[name] if name in TASK_FILES else VALIDATION_FILES[name]


def load_suite_task(name: str, data_dir: str | os.PathLike | Path, plan: Suite, seed: int = 0) -> LoadedTask:
    """Task ``name`` loaded at ``plan``'s size (``tasks.load_task`` or ``load_validation_task``)."""
    if name in VALIDATION_TASKS:
        return load_validation_task(name, data_dir, seed=seed, **task_limits(name, plan))
    return load_task(name, data_dir, seed=seed, **task_limits(name, plan))


def task_limits(name: str, plan: Suite) -> dict[str, Any]:
    """The size arguments of ``name`` under ``plan``."""
    if name in ("STSBenchmark", "SICK-R"):
        return {"limit": plan.sts_pairs}
    if name == "Banking77Classification":
        return {"limit": plan.banking_test, "n_experiments": plan.banking_experiments}
    if name == "Banking77Clustering":
        return {"limit": plan.clustering_texts, "n_experiments": plan.clustering_runs}
    if name == "SciFact":
        return {"limit": plan.scifact_queries, "corpus_limit": plan.scifact_corpus}
    return {
        "AmazonCounterfactualClassification": {"limit": plan.amazon_test, "n_experiments": plan.probe_runs,
                                               "train_limit": plan.probe_pool},
        "TweetEvalClassification": {"limit": plan.tweeteval_test, "n_experiments": plan.probe_runs,
                                    "train_limit": plan.probe_pool},
        "CustomerReviewsClassification": {"limit": plan.review_sentences},
        "CustomerReviewsClustering": {"limit": plan.review_sentences, "n_experiments": plan.review_clustering_runs},
        "TwitterURLCorpus": {"limit": plan.twitter_pairs},
        "WikiQAReranking": {"limit": plan.wikiqa_questions},
        "TrecQAReranking": {"limit": plan.trecqa_questions},
        "NFCorpusOriginal": {"limit": plan.nfcorpus_queries, "corpus_limit": plan.nfcorpus_corpus},
    }[name]
