"""Offline MTEB task loading: our data files injected into mteb's real task classes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import SHARED_DATA

from gem_adapter.errors import GEMConfigError, GEMError
from gem_adapter.evaluation import evaluate_mteb
from gem_adapter.evaluation.tasks import (
    MissingDataError,
    default_data_dir,
    load_task,
    resolve_data_dir,
)

needs_data = pytest.mark.skipif(not (SHARED_DATA / "README.md").is_file(), reason=f"no evaluation data at {SHARED_DATA}")


@needs_data
def test_full_tasks_are_mtebs_classes_with_mtebs_counts_and_columns():
    sts = load_task("STSBenchmark", SHARED_DATA).task
    assert type(sts).__name__ == "STSBenchmarkSTS" and sts.data_loaded
    test = sts.dataset["default"]["test"]
    assert test.column_names == ["sentence1", "sentence2", "score"] and len(test) == 1379
    sick = load_task("sick-r", SHARED_DATA)  # case-insensitive name
    assert sick.name == "SICK-R" and len(sick.task.dataset["default"]["test"]) == 9927
    assert sick.note == "all 9,927 pairs"
    banking = load_task("Banking77Classification", SHARED_DATA).task
    splits = banking.dataset["default"]
    assert (len(splits["train"]), len(splits["test"])) == (10003, 3080)
    assert splits["test"].column_names == ["text", "label"] and len(set(splits["test"]["label"])) == 77
    assert banking.n_experiments == 10 and banking.samples_per_label == 8  # MTEB's protocol untouched
    scifact = load_task("SciFact", SHARED_DATA).task.dataset["default"]["test"]
    assert (len(scifact["queries"]), len(scifact["corpus"])) == (300, 5183)
    assert sum(len(docs) for docs in scifact["relevant_docs"].values()) == 339
    assert set(scifact["corpus"].column_names) == {"id", "title", "text"}


@needs_data
def test_subsets_are_seeded_and_stated():
    first = load_task("STSBenchmark", SHARED_DATA, limit=50, seed=0)
    again = load_task("STSBenchmark", SHARED_DATA, limit=50, seed=0)
    other = load_task("STSBenchmark", SHARED_DATA, limit=50, seed=1)
    rows = lambda loaded: loaded.task.dataset["default"]["test"]["sentence1"]
    assert rows(first) == rows(again) != rows(other) and len(rows(first)) == 50
    assert first.note == "50 of 1,379 pairs (seeded random subset, seed 0)"


@needs_data
def test_banking_subset_is_stratified_and_scifact_subset_keeps_relevant_documents():
    banking = load_task("Banking77Classification", SHARED_DATA, limit=154, n_experiments=1)
    counts = Counter(banking.task.dataset["default"]["test"]["label"])
    assert len(counts) == 77 and set(counts.values()) == {2} and banking.task.n_experiments == 1
    assert "154 of 3,080 test texts" in banking.note and "1 classifier run(s)" in banking.note
    scifact = load_task("SciFact", SHARED_DATA, limit=10, corpus_limit=50).task.dataset["default"]["test"]
    corpus_ids = set(scifact["corpus"]["id"])
    assert len(scifact["queries"]) == 10 and len(corpus_ids) == 50
    assert all(doc in corpus_ids for docs in scifact["relevant_docs"].values() for doc in docs)


def test_missing_files_raise_the_named_error(tmp_path):
    (tmp_path / "sts" / "stsbenchmark").mkdir(parents=True)
    with pytest.raises(MissingDataError) as caught:
        load_task("STSBenchmark", tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "sts" / "stsbenchmark" / "sts-test.csv") in message and "--data-dir" in message
    assert isinstance(caught.value, GEMError)
    with pytest.raises(MissingDataError, match="SICK_train.txt, which does not exist"):
        load_task("SICK-R", tmp_path)
    with pytest.raises(MissingDataError, match="evaluation data directory .* does not exist; pass --data-dir"):
        resolve_data_dir(tmp_path / "nowhere")


def test_data_dir_defaults_to_env_then_shared(monkeypatch, tmp_path):
    monkeypatch.setenv("GEM_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path and resolve_data_dir() == tmp_path
    monkeypatch.delenv("GEM_DATA")
    assert default_data_dir().parts[-2:] == ("shared", "data")
    with pytest.raises(GEMConfigError, match="unknown MTEB task 'STS12'; choose from STSBenchmark"):
        load_task("STS12", tmp_path)


class ToyEncoder:
    """An mteb encoder whose embedding of a text is ``embed(text)``: no model behind it."""

    def __init__(self, embed, dim: int) -> None:
        self.embed, self.dim, self._meta = embed, dim, None

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        if self._meta is None:
            self._meta = ModelMeta.create_empty(overwrites={
                "name": "test/toy", "revision": "1", "similarity_fn_name": ScoringFunction.COSINE, "embed_dim": self.dim})
        return self._meta

    def encode(self, inputs, **kwargs):
        return np.stack([self.embed(text) for batch in inputs for text in batch["text"]]).astype(np.float32)

    def similarity(self, a, b):
        from mteb.similarity_functions import cos_sim

        return cos_sim(a, b)

    def similarity_pairwise(self, a, b):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(a, b)


@needs_data
def test_banking77_clustering_is_mtebs_clustering_protocol_on_the_test_texts():
    from mteb.abstasks.clustering import AbsTaskClustering

    loaded = load_task("banking77clustering", SHARED_DATA)
    task = loaded.task
    assert loaded.name == "Banking77Clustering" and isinstance(task, AbsTaskClustering) and task.data_loaded
    assert task.metadata.main_score == "v_measure" and task.metadata.type == "Clustering"
    test = task.dataset["default"]["test"]
    assert test.column_names == ["sentences", "labels"] and len(test) == 3080 and len(set(test["labels"])) == 77
    # mteb's defaults: 10 k-means runs of 16,384 texts drawn with replacement; every text embedded
    assert (task.n_clusters, task.max_documents_per_cluster, task.max_fraction_of_documents_to_embed) == (10, 16384, None)
    assert loaded.note.startswith("all 3,080 test texts, 77 intents; 10 k-means run(s)")
    quick = load_task("Banking77Clustering", SHARED_DATA, limit=308, n_experiments=3)
    counts = Counter(quick.task.dataset["default"]["test"]["labels"])
    assert set(counts.values()) == {4} and len(counts) == 77 and quick.task.n_clusters == 3
    # the same seeded stratified draw as the classification subset, so its texts are a superset
    classification = load_task("Banking77Classification", SHARED_DATA, limit=154, n_experiments=1)
    assert set(classification.task.dataset["default"]["test"]["text"]) <= set(quick.task.dataset["default"]["test"]["sentences"])


@needs_data
def test_clustering_scores_a_separable_encoder_high_and_a_constant_encoder_zero():
    loaded = load_task("Banking77Clustering", SHARED_DATA, limit=154, n_experiments=1)
    test = loaded.task.dataset["default"]["test"]
    label_of = dict(zip(test["sentences"], test["labels"]))
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(77, 16))
    separable = ToyEncoder(lambda text: centres[label_of[text]] + 0.01 * rng.normal(size=16), 16)
    constant = ToyEncoder(lambda text: np.ones(16), 16)
    scores = {}
    for name, encoder in (("separable", separable), ("constant", constant)):
        result = evaluate_mteb(encoder, [loaded], show_progress=False).task_results[0]
        scores[name] = 100 * result.get_score()
        assert result.scores["test"][0]["main_score"] == result.scores["test"][0]["v_measure"]
    assert scores["separable"] > 95 and scores["constant"] < 1
