"""Out-of-domain bookkeeping of the validation suites: task families, what is in-domain, OOD averages.

The validation suites score the sets of ``validation_tasks`` (never trained on) and, as a
separate "similarity" family, STSBenchmark and SICK-R, which the project's pairs recipes
do train on. A task is out-of-domain unless the adapter's recipe used its train split
(``train_summary.json``'s ``train_splits_used``). Without that record the similarity tasks
count as in-domain for an adapter (they may have been trained on) and as out-of-domain with
no adapter at all (nothing was trained). The OOD average is the plain mean of the OOD
tasks' main scores; a family average is the mean over the family's tasks, in-domain or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .validation_tasks import VALIDATION_TASKS

SIMILARITY_TASKS: tuple[str, ...] = ("STSBenchmark", "SICK-R")
FAMILIES: tuple[str, ...] = ("classification", "pair classification", "reranking", "retrieval", "clustering", "similarity")
TASK_FAMILIES: dict[str, str] = {
    "AmazonCounterfactualClassification": "classification",
    "TweetEvalClassification": "classification",
    "CustomerReviewsClassification": "classification",
    "TwitterURLCorpus": "pair classification",
    "WikiQAReranking": "reranking",
    "TrecQAReranking": "reranking",
    "NFCorpusOriginal": "retrieval",
    "CustomerReviewsClustering": "clustering",
    "STSBenchmark": "similarity",
    "SICK-R": "similarity",
}
VALIDATION_SUITE_TASKS: tuple[str, ...] = VALIDATION_TASKS + SIMILARITY_TASKS
# reranking tasks: the second number a report gives beside MAP
SECONDARY_SCORES: dict[str, str] = {"WikiQAReranking": "mrr_at_10", "TrecQAReranking": "mrr_at_10"}


def in_domain_tasks(tasks: Sequence[str], used: Sequence[str] | None, has_adapter: bool) -> tuple[list[str], str]:
    """The tasks of ``tasks`` to leave out of the OOD average, and one sentence saying why.

    ``used``: the adapter's ``train_splits_used`` (None when not recorded)."""
    if used is not None:
        chosen = [task for task in tasks if task in set(used)]
        why = f"the adapter's train_summary.json names the train splits it used ({', '.join(used) or 'none'})"
        return chosen, why + ("" if chosen else ", none of them a task here")
    if not has_adapter:
        return [], "there is no adapter, so nothing was trained"
    chosen = [task for task in tasks if task in SIMILARITY_TASKS]
    return chosen, ("the adapter records no train_splits_used, so the similarity tasks, which a recipe may train on, "
                    "count as in-domain" if chosen else "the adapter records no train_splits_used")


def ood_scores(scores: Mapping[str, float], in_domain: Sequence[str]) -> dict[str, Any]:
    """``ood_average`` (mean over the tasks not in ``in_domain``; None if there are none) and
    ``family_averages`` ({family: mean over its tasks in ``scores``}, in ``FAMILIES`` order)."""
    held_out = [score for task, score in scores.items() if task not in set(in_domain)]
    families: dict[str, float] = {}
    for family in FAMILIES:
        members = [score for task, score in scores.items() if TASK_FAMILIES.get(task) == family]
        if members:
            families[family] = sum(members) / len(members)
    return {"ood_average": sum(held_out) / len(held_out) if held_out else None, "family_averages": families}


def family_is_in_domain(family: str, tasks: Sequence[str], in_domain: Sequence[str]) -> bool:
    """Whether any of the family's tasks among ``tasks`` is in-domain (its average is then marked)."""
    return any(TASK_FAMILIES.get(task) == family and task in set(in_domain) for task in tasks)


def task_details(result) -> dict[str, Any]:
    """What a report shows beside a task's main score, from an mteb ``TaskResult``: per-subset
    main scores of a task with several (TweetEval's subtasks) and the reranking tasks' MRR@10 (x100)."""
    details: dict[str, Any] = {}
    rows = result.scores.get("test", [])
    if len(rows) > 1:
        details["subsets"] = {row["hf_subset"]: 100.0 * float(row["main_score"]) for row in rows}
    secondary = SECONDARY_SCORES.get(result.task_name)
    if secondary and rows and secondary in rows[0]:
        details[secondary] = 100.0 * float(rows[0][secondary])
    return details
