"""Evaluation: MTEB tasks on offline data, LM-preservation metrics, baselines, reports.

``run_evaluation`` runs GEM against the decoder baselines (mean, last token, PromptEOL) and
all-MiniLM-L6-v2; ``cli/evaluate.py`` is its ``gem eval`` command.

| module | what it does |
|---|---|
| ``tasks`` | MTEB tasks (STS, classification, clustering, retrieval) with our offline copies injected |
| ``encoder`` | ``GEMEncoder``: a ``GEMModel`` behind mteb's encoder protocol; MiniLM reference |
| ``lm`` | LM preservation: MMLU, ARC-Easy, HellaSwag, WikiText-2 perplexity; standard errors |
| ``validation_data`` | readers of the out-of-domain validation sets (``<data dir>/validation/``) |
| ``validation_tasks`` | those sets in mteb task classes (registered ones where mteb has the data) |
| ``validation`` | task families, what is in-domain, the out-of-domain and family averages |
| ``suites`` | ``Suite`` and ``SUITES``: quick, full, validation, validation-full |
| ``runner`` | ``run_evaluation``: suites, baselines, one output folder |
| ``validation_scorer`` | ``ValidationScorer``: a model's validation scores without a run folder |
| ``report`` | ``summary.json`` -> ``report.md`` and ``report.png`` | Heavy libraries (mteb,
sentence-transformers, matplotlib) are imported only when a function needs them.
"""

from __future__ import annotations

from .. import quiet_peft  # noqa: F401  (first: sentence-transformers imports PEFT, which would import bitsandbytes)
from .encoder import (
    PROMPTEOL_TEMPLATE,
    EmbeddingStore,
    GEMEncoder,
    load_minilm,
    minilm_path,
)
from .lm import (
    LM_TASKS,
    choice_loglikelihoods,
    evaluate_arc_easy,
    evaluate_hellaswag,
    evaluate_mmlu,
    evaluate_wikitext2,
    loglikelihood,
    mmlu_quotas,
    paired_difference,
    perplexity,
    sliding_windows,
    standard_error,
)
from .report import family_table_rows, table_rows, write_report
from .runner import BASELINES, evaluate_mteb, run_evaluation
from .suites import ALL_TASKS, SUITES, Suite
from .tasks import (
    MTEB_TASKS,
    LoadedTask,
    MissingDataError,
    default_data_dir,
    load_task,
    resolve_data_dir,
)
from .validation import (
    FAMILIES,
    SIMILARITY_TASKS,
    TASK_FAMILIES,
    VALIDATION_SUITE_TASKS,
    ood_scores,
)
from .validation_scorer import ValidationScorer, score_validation
from .validation_tasks import VALIDATION_TASKS, load_validation_task

__all__ = [
    "ALL_TASKS",
    "BASELINES",
    "FAMILIES",
    "LM_TASKS",
    "MTEB_TASKS",
    "PROMPTEOL_TEMPLATE",
    "SIMILARITY_TASKS",
    "SUITES",
    "TASK_FAMILIES",
    "VALIDATION_SUITE_TASKS",
    "VALIDATION_TASKS",
    "EmbeddingStore",
    "GEMEncoder",
    "LoadedTask",
    "MissingDataError",
    "Suite",
    "ValidationScorer",
    "choice_loglikelihoods",
    "default_data_dir",
    "evaluate_arc_easy",
    "evaluate_hellaswag",
    "evaluate_mmlu",
    "evaluate_mteb",
    "evaluate_wikitext2",
    "family_table_rows",
    "load_minilm",
    "load_task",
    "load_validation_task",
    "loglikelihood",
    "minilm_path",
    "mmlu_quotas",
    "ood_scores",
    "paired_difference",
    "perplexity",
    "resolve_data_dir",
    "run_evaluation",
    "score_validation",
    "sliding_windows",
    "standard_error",
    "table_rows",
    "write_report",
]
