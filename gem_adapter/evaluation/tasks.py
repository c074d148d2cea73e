"""Offline MTEB tasks: our copies of the benchmark files injected into mteb's real task classes.

``load_task("STSBenchmark")`` returns ``mteb.get_task("STSBenchmark")`` with ``task.dataset``
filled from ``<data dir>/sts/stsbenchmark/sts-test.csv`` and ``task.data_loaded = True``, so
``mteb.evaluate`` scores it with mteb's own evaluators and never touches the network.
Banking77Clustering is not in mteb's registry: it is mteb's ``AbsTaskClustering`` (the
"fast" clustering protocol of the ``.v2`` clustering tasks) over the Banking77 test texts
and their 77 intents, built here with its own ``TaskMetadata``.
Optional subsampling (deterministic, seeded) keeps quick runs quick; every loaded task
carries a one-line ``note`` saying what it holds, for the report.

The data directory is ``data_dir`` if given, else ``$GEM_DATA``, else ``<repo>/../shared/data``.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GEMConfigError, GEMError

MTEB_TASKS: tuple[str, ...] = ("STSBenchmark", "SICK-R", "Banking77Classification", "Banking77Clustering", "SciFact")

# Files each task reads, relative to the data directory.
TASK_FILES: dict[str, tuple[str, ...]] = {
    "STSBenchmark": ("sts/stsbenchmark/sts-test.csv",),
    "SICK-R": ("sts/sickr/SICK_train.txt", "sts/sickr/SICK_trial.txt", "sts/sickr/SICK_test_annotated.txt"),
    "Banking77Classification": (
        "classification/banking77/train.csv",
        "classification/banking77/test.csv",
        "classification/banking77/categories.json",
    ),
    "Banking77Clustering": ("classification/banking77/test.csv", "classification/banking77/categories.json"),
    "SciFact": ("retrieval/scifact/corpus.jsonl", "retrieval/scifact/queries_test.jsonl", "retrieval/scifact/qrels_test.tsv"),
}


class MissingDataError(GEMError, FileNotFoundError):
    """A benchmark file is not in the data directory."""


@dataclass
class LoadedTask:
    """An mteb task with its data injected, and a note on what subset it holds."""

    name: str
    task: Any
    note: str


def default_data_dir() -> Path:
    """``$GEM_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("GEM_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory to read: the argument, else ``default_data_dir()``; it must exist."""
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    if not path.is_dir():
        raise MissingDataError(
            f"evaluation data directory {path} does not exist; pass --data-dir DIR (or set GEM_DATA) "
            "to the folder holding the offline benchmark copies (see shared/data/README.md)"
        )
    return path


def canonical_task_name(name: str) -> str:
    """The exact MTEB name for ``name`` (case-insensitive), or a ``GEMConfigError``."""
    for known in MTEB_TASKS:
        if name.strip().lower() == known.lower():
            return known
    raise GEMConfigError(f"unknown MTEB task {name!r}; choose from {', '.join(MTEB_TASKS)}")


def require_files(name: str, data_dir: Path, relative: tuple[str, ...] | None = None) -> list[Path]:
    """The task's files under ``data_dir``; a ``MissingDataError`` naming the first missing one."""
    paths = [data_dir / part for part in (relative if relative is not None else TASK_FILES[name])]
    for path in paths:
        if not path.is_file():
            raise MissingDataError(
                f"{name} needs {path}, which does not exist; copy the benchmark files there, or pass "
                f"--data-dir DIR (or set GEM_DATA) to a folder laid out as shared/data/README.md describes"
            )
    return paths


def load_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    n_experiments: int | None = None,
    corpus_limit: int | None = None,
) -> LoadedTask:
    """Build mteb's task ``name`` from the offline files, optionally subsampled.

    ``limit`` caps pairs (STS), test texts (Banking77 classification and clustering,
    stratified by label) or queries (SciFact); ``corpus_limit`` caps SciFact's corpus (every
    relevant document of the kept queries stays, the rest are seeded random distractors);
    ``n_experiments`` overrides Banking77Classification's number of few-shot classifier runs
    (MTEB: 10) or Banking77Clustering's number of k-means runs (MTEB: 10). Subsets are
    seeded by ``seed``.
    """
    name = canonical_task_name(name)
    directory = resolve_data_dir(data_dir)
    paths = require_files(name, directory)
    import mteb

    if name == "Banking77Clustering":
        task = banking77_clustering_task()
        dataset, note = _banking77_clustering_dataset(paths, limit, seed)
        if n_experiments is not None:
            task.n_clusters = int(n_experiments)
        intents = len(set(dataset["test"]["labels"]))
        note += (f"; {task.n_clusters} k-means run(s) (MiniBatchKMeans, k = {intents}), each on "
                 f"{task.max_documents_per_cluster:,} texts drawn with replacement; V-measure averaged")
        task.dataset = {"default": dataset}
        task.data_loaded = True
        return LoadedTask(name=name, task=task, note=note)
    task = mteb.get_task(name, eval_splits=["test"])
    if name in ("STSBenchmark", "SICK-R"):
        dataset, note = _sts_dataset(name, paths, limit, seed)
    elif name == "Banking77Classification":
        dataset, note = _banking77_dataset(paths, limit, seed)
        if n_experiments is not None:
            task.n_experiments = int(n_experiments)
        note += f"; {task.n_experiments} classifier run(s) of {task.samples_per_label} train texts per label"
    else:
        dataset, note = _scifact_dataset(paths, limit, corpus_limit, seed)
    task.dataset = {"default": dataset}
    task.data_loaded = True
    return LoadedTask(name=name, task=task, note=note)


def _subsample(count: int, limit: int | None, seed: int) -> list[int]:
    """Sorted seeded sample of ``limit`` indices out of ``count`` (all when no limit)."""
    if limit is None or limit >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), limit))


def _sts_dataset(name: str, paths: list[Path], limit: int | None, seed: int):
    from datasets import Dataset, DatasetDict

    rows: list[dict[str, Any]] = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as handle:
            if name == "STSBenchmark":
                for record in csv.DictReader(handle):
                    rows.append({"sentence1": record["sentence1"], "sentence2": record["sentence2"],
                                 "score": float(record["score"])})
            else:  # SICK-R: MTEB scores all pairs of the train, trial and test files together
                for record in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                    rows.append({"sentence1": record["sentence_A"], "sentence2": record["sentence_B"],
                                 "score": float(record["relatedness_score"])})
    keep = _subsample(len(rows), limit, seed)
    note = _count_note(len(keep), len(rows), "pairs", seed)
    return DatasetDict({"test": Dataset.from_list([rows[i] for i in keep])}), note


def _read_banking77(path: Path, categories_path: Path) -> list[dict[str, Any]]:
    """Rows ``{"text", "label"}`` of a Banking77 CSV, labels indexed as in ``categories.json``."""
    categories = json.loads(categories_path.read_text(encoding="utf-8"))
    label_of = {category: index for index, category in enumerate(categories)}
    with path.open(encoding="utf-8", newline="") as handle:
        rows = []
        for number, record in enumerate(csv.DictReader(handle), 2):
            if record["category"] not in label_of:
                raise GEMError(f"{path}:{number}: category {record['category']!r} is not in {categories_path}")
            rows.append({"text": record["text"], "label": label_of[record["category"]]})
        return rows


def _stratified(labels: list[int], limit: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded subset of ``limit`` items, dealt round-robin over the labels
    (so every label keeps the same count, give or take one); all when no limit."""
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    rng = random.Random(seed)
    for indices in by_label.values():
        rng.shuffle(indices)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        for label in sorted(by_label):
            if depth < len(by_label[label]) and len(chosen) < limit:
                chosen.append(by_label[label][depth])
        depth += 1
    return sorted(chosen)


def _banking77_dataset(paths: list[Path], limit: int | None, seed: int):
    from datasets import Dataset, DatasetDict

    train_path, test_path, categories_path = paths
    train, test = _read_banking77(train_path, categories_path), _read_banking77(test_path, categories_path)
    kept = [test[i] for i in _stratified([row["label"] for row in test], limit, seed)]
    note = _count_note(len(kept), len(test), "test texts", seed, "stratified by label")
    dataset = DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(kept)})
    return dataset, note


def _banking77_clustering_dataset(paths: list[Path], limit: int | None, seed: int):
    """The test texts (column ``sentences``) and their intents (``labels``), as mteb's fast
    clustering tasks hold them."""
    from datasets import Dataset, DatasetDict

    test_path, categories_path = paths
    test = _read_banking77(test_path, categories_path)
    kept = [test[i] for i in _stratified([row["label"] for row in test], limit, seed)]
    note = _count_note(len(kept), len(test), "test texts", seed, "stratified by label")
    note += f", {len({row['label'] for row in kept})} intents"
    dataset = DatasetDict({"test": Dataset.from_dict({"sentences": [row["text"] for row in kept],
                                                      "labels": [row["label"] for row in kept]})})
    return dataset, note


_CLUSTERING_CLASS: type | None = None


def banking77_clustering_task():
    """A fresh ``Banking77Clustering`` task: mteb's ``AbsTaskClustering`` with our metadata.

    mteb has no Banking77 clustering task; this one follows its clustering protocol as its
    own ``.v2`` clustering tasks do (``AbsTaskClustering`` defaults: 10 MiniBatchKMeans runs
    with k = the number of true labels, each on 16,384 texts drawn with replacement from the
    embedded ones, main score the mean V-measure), embedding every loaded text
    (``max_fraction_of_documents_to_embed = None``, as RedditClustering.v2 does after its
    own subsampling). Metadata (dataset, licence, citation) are Banking77Classification's.
    """
    global _CLUSTERING_CLASS
    if _CLUSTERING_CLASS is None:
        import mteb
        from mteb.abstasks.clustering import AbsTaskClustering
        from mteb.abstasks.task_metadata import TaskMetadata

        source = mteb.get_task("Banking77Classification").metadata

        class Banking77Clustering(AbsTaskClustering):
            metadata = TaskMetadata(
                name="Banking77Clustering",
                description="Clustering of online banking queries (Banking77 test split) by their 77 intents.",
                reference=source.reference,
                dataset=dict(source.dataset),
                type="Clustering",
                category="t2c",
                modalities=["text"],
                eval_splits=["test"],
                eval_langs=["eng-Latn"],
                main_score="v_measure",
                date=source.date,
                domains=list(source.domains or []),
                task_subtypes=[],
                license=source.license,
                annotations_creators=source.annotations_creators,
                dialect=[],
                sample_creation="found",
                bibtex_citation=source.bibtex_citation,
                prompt="Identify the intent of the online banking query",
                adapted_from=["Banking77Classification"],
            )
            max_fraction_of_documents_to_embed = None

        _CLUSTERING_CLASS = Banking77Clustering
    return _CLUSTERING_CLASS()


def _scifact_dataset(paths: list[Path], limit: int | None, corpus_limit: int | None, seed: int):
    from datasets import Dataset

    corpus_path, queries_path, qrels_path = paths
    corpus = [json.loads(line) for line in corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    queries = [json.loads(line) for line in queries_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    relevant: dict[str, dict[str, int]] = defaultdict(dict)
    with qrels_path.open(encoding="utf-8", newline="") as handle:
        for record in csv.DictReader(handle, delimiter="\t"):
            relevant[str(record["query-id"])][str(record["corpus-id"])] = int(record["score"])
    queries = [q for q in queries if str(q["_id"]) in relevant]

    kept_queries = [queries[i] for i in _subsample(len(queries), limit, seed)]
    qrels = {str(q["_id"]): relevant[str(q["_id"])] for q in kept_queries}
    needed = {doc for docs in qrels.values() for doc in docs}
    if corpus_limit is not None and corpus_limit < len(corpus):
        others = [i for i, doc in enumerate(corpus) if str(doc["_id"]) not in needed]
        room = max(corpus_limit - len(needed), 0)
        extra = set(random.Random(seed + 1).sample(others, min(room, len(others))))
        kept_docs = [doc for i, doc in enumerate(corpus) if str(doc["_id"]) in needed or i in extra]
    else:
        kept_docs = corpus
    note = _count_note(len(kept_queries), len(queries), "queries", seed)
    if len(kept_docs) < len(corpus):
        note += (f"; corpus {len(kept_docs):,} of {len(corpus):,} documents (all relevant ones "
                 f"+ seeded random distractors)")
    split = {
        "corpus": Dataset.from_list([{"id": str(d["_id"]), "title": d.get("title") or "", "text": d["text"]}
                                     for d in kept_docs]),
        "queries": Dataset.from_list([{"id": str(q["_id"]), "text": q["text"]} for q in kept_queries]),
        "relevant_docs": qrels,
        "top_ranked": None,
    }
    return {"test": split}, note


def _count_note(kept: int, total: int, unit: str, seed: int, how: str = "") -> str:
    if kept >= total:
        return f"all {total:,} {unit}"
    extra = f", {how}" if how else ""
    return f"{kept:,} of {total:,} {unit} (seeded random subset, seed {seed}{extra})"
