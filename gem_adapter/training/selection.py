"""Checkpoint selection on the out-of-domain validation suite (``validation_eval``, ``select_best_by``).

With ``validation_eval`` a training run scores the adapter it is training on a slice of
``gem eval --suite validation`` at every evaluation step, beside the eval loss: the scores
go into that step's eval metrics as ``eval_validation_<task>``, ``eval_validation_<family>``
and ``eval_validation_ood_average`` (logged, in ``loss_log.jsonl``). With ``select_best_by``
the run keeps the checkpoint with the highest such value and makes it the output adapter:
transformers' own ``metric_for_best_model`` / ``load_best_model_at_end``, which this module
only names. ``train_summary.json`` then records the metric, the best step and its value.

Under several processes every process scores the same slice (the same numbers), so each
has the metric transformers compares. The scoring itself is the evaluation wing's
(``evaluation.ValidationScorer``); ``train`` may be handed any other scorer (a test seam):
a callable ``scorer(gem_model) -> {"scores", "ood_average", "family_averages"}``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import GEMConfigError

PREFIX = "validation_"
OOD_AVERAGE = "ood_average"


def _suite_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(validation task names, family names) of the evaluation wing."""
    from ..evaluation import FAMILIES, VALIDATION_SUITE_TASKS

    return VALIDATION_SUITE_TASKS, FAMILIES


def _key(name: str) -> str:
    return name.strip().replace(" ", "_").replace("-", "_").lower()


def canonical_validation_tasks(tasks: Sequence[str] | None) -> list[str] | None:
    """``validation_tasks`` made exact (case-insensitive), or a ``GEMConfigError`` naming the choices."""
    if tasks is None:
        return None
    known, _ = _suite_names()
    chosen = []
    for name in tasks:
        match = next((task for task in known if _key(task) == _key(str(name))), None)
        if match is None:
            raise GEMConfigError(f"validation_tasks: unknown task {name!r}; choose from {', '.join(known)}")
        chosen.append(match)
    if not chosen:
        raise GEMConfigError(f"validation_tasks is empty; leave it unset for all of {', '.join(known)}")
    return list(dict.fromkeys(chosen))


def metric_name(select_best_by: str, tasks: Sequence[str] | None = None) -> str:
    """The logged metric (without ``eval_``) that ``select_best_by`` names: ``validation_ood_average``,
    ``validation_<family>`` or ``validation_<task>``, among the tasks scored (``tasks``; None: all)."""
    known, families = _suite_names()
    scored = list(tasks) if tasks is not None else list(known)
    from ..evaluation import TASK_FAMILIES

    choices = [OOD_AVERAGE] + [_key(f) for f in families if any(TASK_FAMILIES[t] == f for t in scored)] + scored
    wanted = _key(select_best_by.removeprefix("eval_").removeprefix(PREFIX))
    for choice in choices:
        if _key(choice) == wanted:
            return PREFIX + choice
    raise GEMConfigError(f"select_best_by {select_best_by!r} is not a validation metric of this run; choose from "
                         f"{', '.join(choices)}")


def validation_metrics(outcome: dict[str, Any]) -> dict[str, float]:
    """A scorer's outcome as flat metrics: ``validation_<task>``, ``validation_<family>``, ``validation_ood_average``."""
    metrics = {PREFIX + task: float(score) for task, score in outcome["scores"].items()}
    metrics.update({PREFIX + _key(family): float(score) for family, score in (outcome.get("family_averages") or {}).items()})
    if outcome.get("ood_average") is not None:
        metrics[PREFIX + OOD_AVERAGE] = float(outcome["ood_average"])
    return metrics


def check_selection(config) -> None:
    """Check the validation fields of a ``GEMTrainingConfig`` (before transformers' own checks) and,
    for ``select_best_by``, set ``metric_for_best_model``, ``greater_is_better`` and ``load_best_model_at_end``."""
    if not isinstance(config.validation_eval, bool):
        raise GEMConfigError(f"validation_eval must be true or false, got {config.validation_eval!r}")
    limit = config.validation_limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GEMConfigError(f"validation_limit must be an integer >= 1 or None (the quick sizes), got {limit!r}")
    config.validation_tasks = canonical_validation_tasks(config.validation_tasks)
    evaluates = str(getattr(config.eval_strategy, "value", config.eval_strategy)) != "no" and config.eval_chunks > 0
    if config.validation_eval and not evaluates:
        raise GEMConfigError("validation_eval scores the adapter at evaluation steps: set eval_strategy: steps (with "
                             "eval_steps) and eval_chunks > 0")
    if config.select_best_by is None:
        return
    if not config.validation_eval:
        raise GEMConfigError("select_best_by needs validation_eval: true (the scores it selects by)")
    metric = metric_name(config.select_best_by, config.validation_tasks)
    if config.metric_for_best_model not in (None, metric, f"eval_{metric}"):
        raise GEMConfigError(f"select_best_by ({metric}) and metric_for_best_model ({config.metric_for_best_model}) "
                             "disagree; set only select_best_by")
    eval_strategy = str(getattr(config.eval_strategy, "value", config.eval_strategy))
    save_strategy = str(getattr(config.save_strategy, "value", config.save_strategy))
    eval_steps = config.eval_steps or config.logging_steps  # transformers' fallback
    if save_strategy != eval_strategy or (eval_strategy == "steps" and config.save_steps != eval_steps):
        raise GEMConfigError(f"select_best_by keeps a checkpoint at every evaluation: set save_strategy to eval_strategy "
                             f"and save_steps equal to eval_steps (now {save_strategy} every {config.save_steps}, "
                             f"{eval_strategy} every {eval_steps})")
    config.metric_for_best_model = metric
    config.greater_is_better = True
    config.load_best_model_at_end = True


def default_scorer(config, in_domain: Sequence[str]):
    """``evaluation.ValidationScorer`` over ``config.validation_tasks`` capped at ``config.validation_limit``:
    the validation suite's seeded subsets (seed 0, so runs of any seed are selected on the same texts);
    ``in_domain``: the tasks whose train split the run trains on, left out of the OOD average. Loading
    it reads and checks the data, so a missing file stops the run before any model loads."""
    from ..evaluation import ValidationScorer

    return ValidationScorer(config.validation_data, tasks=config.validation_tasks, limit=config.validation_limit,
                            in_domain=in_domain, batch_size=config.per_device_eval_batch_size)


def validation_hook(scorer: Callable[..., dict], gem) -> Callable[[], dict[str, float]]:
    """What ``GEMTrainer`` calls at an evaluation step: ``scorer(gem)`` as flat validation metrics.

    The global random generators are restored after the call (mteb's evaluators reseed them),
    so training draws the same numbers with validation on or off.
    """
    def hook() -> dict[str, float]:
        with preserved_random_state():
            return validation_metrics(scorer(gem))

    return hook


@contextlib.contextmanager
def preserved_random_state():
    """Restore ``random``'s, numpy's and torch's global generators (CPU and CUDA) on exit."""
    import numpy as np
    import torch

    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if saved[3] is not None:
            torch.cuda.set_rng_state_all(saved[3])


def selection_summary(config, state) -> dict[str, Any] | None:
    """``train_summary.json``'s ``validation`` entry: the metric, the best step and value, every step's scores."""
    if not config.validation_eval:
        return None
    by_step = {int(record["step"]): {key.removeprefix("eval_"): value for key, value in record.items()
                                     if key.startswith("eval_" + PREFIX)}
               for record in state.log_history if any(key.startswith("eval_" + PREFIX) for key in record)}
    summary: dict[str, Any] = {"tasks": config.validation_tasks, "limit": config.validation_limit, "by_step": by_step}
    if config.select_best_by:
        metric = metric_name(config.select_best_by, config.validation_tasks)
        best_step = state.best_global_step
        summary.update(metric=metric, best_step=best_step,
                       best_value=by_step.get(best_step, {}).get(metric) if best_step is not None else None,
                       adapter_from=f"checkpoint-{best_step}" if best_step is not None else None)
    return summary
