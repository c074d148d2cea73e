"""Offline MTEB task loading: our data files injected into mteb's real task classes."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import SHARED_DATA
from gem_adapter.errors import GEMConfigError, GEMError
from gem_adapter.evaluation.tasks import MissingDataError, default_data_dir, load_task, resolve_data_dir

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
    rows = lambda loaded: loaded.task.dataset["default"]["test"]["sentence1"]  # noqa: E731
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
