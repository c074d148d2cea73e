"""Evaluation: MTEB tasks on offline data, LM-preservation metrics, baselines, reports.

``run_evaluation`` runs GEM against the decoder baselines (mean, last token, PromptEOL) and
all-MiniLM-L6-v2; ``cli/evaluate.py`` is its ``gem eval`` command.

| module | what it does |
|---|---|
| ``tasks`` | MTEB tasks (STS, classification, clustering, retrieval) with our offline copies injected |
| ``encoder`` | ``GEMEncoder``: a ``GEMModel`` behind mteb's encoder protocol; MiniLM reference |
| ``lm`` | LM preservation: MMLU, ARC-Easy, HellaSwag, WikiText-2 perplexity; standard errors |
| ``runner`` | ``run_evaluation``: suites, baselines, one output folder |
| ``report`` | ``summary.json`` -> ``report.md`` and ``report.png`` | Heavy libraries (mteb,
sentence-transformers, matplotlib) are imported only when a function needs them.
"""

from __future__ import annotations

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
from .report import table_rows, write_report
from .runner import ALL_TASKS, BASELINES, SUITES, Suite, evaluate_mteb, run_evaluation
from .tasks import (
    MTEB_TASKS,
    LoadedTask,
    MissingDataError,
    default_data_dir,
    load_task,
    resolve_data_dir,
)

__all__ = [
    "ALL_TASKS",
    "BASELINES",
    "LM_TASKS",
    "MTEB_TASKS",
    "PROMPTEOL_TEMPLATE",
    "SUITES",
    "EmbeddingStore",
    "GEMEncoder",
    "LoadedTask",
    "MissingDataError",
    "Suite",
    "choice_loglikelihoods",
    "default_data_dir",
    "evaluate_arc_easy",
    "evaluate_hellaswag",
    "evaluate_mmlu",
    "evaluate_mteb",
    "evaluate_wikitext2",
    "load_minilm",
    "load_task",
    "loglikelihood",
    "minilm_path",
    "mmlu_quotas",
    "paired_difference",
    "perplexity",
    "resolve_data_dir",
    "run_evaluation",
    "sliding_windows",
    "standard_error",
    "table_rows",
    "write_report",
]
