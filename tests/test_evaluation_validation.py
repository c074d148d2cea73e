"""The out-of-domain validation suite: its sets in mteb's task classes, the OOD rule, ``gem eval --suite validation``."""

from __future__ import annotations

import json
import zipfile
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, random_gem_adapter, tiny_gem

from gem_adapter.cli.evaluate import eval_command
from gem_adapter.errors import GEMConfigError
from gem_adapter.evaluation import (
    SUITES,
    VALIDATION_SUITE_TASKS,
    ValidationScorer,
    load_validation_task,
    ood_scores,
)
from gem_adapter.evaluation.suites import split_tasks
from gem_adapter.evaluation.validation import in_domain_tasks
from gem_adapter.evaluation.validation_data import (
    CUSTOMER_REVIEW_CATEGORIES,
    read_customer_reviews,
    read_twitter_url_pairs,
)
from gem_adapter.evaluation.validation_tasks import proportional

needs_data = pytest.mark.skipif(not (SHARED_DATA / "validation").is_dir(), reason=f"no validation data at {SHARED_DATA}")


def test_proportional_subsets_keep_label_shares_and_every_label():
    labels = [0] * 90 + [1] * 10
    kept = proportional(labels, 20, seed=0)
    assert Counter(labels[i] for i in kept) == {0: 18, 1: 2} and kept == sorted(kept)
    assert kept == proportional(labels, 20, seed=0) != proportional(labels, 20, seed=1)
    rare = [0] * 99 + [1]
    assert Counter(rare[i] for i in proportional(rare, 10, seed=0)) == {0: 9, 1: 1}  # a rare label is kept
    assert proportional(labels, None, 0) == list(range(100)) == proportional(labels, 500, 0)


def test_customer_review_polarity_is_the_sign_of_the_summed_opinion_marks(tmp_path):
    lines = ["[t]a review title", "screen[+2]##the screen is great", "battery[+1],price[-2]##good battery, too dear",
             "size[+1],weight[-1]##small but heavy", "##no opinion here", "design[u]##looks odd",
             "sound[+]##sounds fine", "*** a comment line"]
    path = tmp_path / "product_reviews_1.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in CUSTOMER_REVIEW_CATEGORIES:
            archive.writestr(f"product_reviews_1/{name}", "\n".join(lines) + "\n")
    rows = read_customer_reviews(path)
    per_file = [(row["text"], row["label"]) for row in rows if row["category"] == "cellular phone"]
    assert per_file == [("the screen is great", 1), ("good battery, too dear", 0), ("sounds fine", 1)]
    assert Counter(row["category"] for row in rows) == {"digital camera": 6, "cellular phone": 3, "mp3 player": 3,
                                                        "dvd player": 3}


def test_twitter_url_pairs_follow_the_corpus_voting_rule(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("a one \tb one \t(4,6)\thttps://t.co/1\r\n\r\na two\tb two\t(3,6)\thttps://t.co/2\r\n"
                    "a three\tb three\t(2,6)\t\thttps://t.co/3\r\n", encoding="utf-8")
    assert read_twitter_url_pairs(path) == [{"sentence1": "a one", "sentence2": "b one", "label": 1},
                                            {"sentence1": "a three", "sentence2": "b three", "label": 0}]


@needs_data
def test_every_validation_set_loads_into_mtebs_classes_with_its_counts_and_labels():
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.clustering import AbsTaskClustering
    from mteb.abstasks.pair_classification import AbsTaskPairClassification
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    amazon = load_validation_task("AmazonCounterfactualClassification", SHARED_DATA).task
    assert type(amazon).__module__.startswith("mteb.tasks") and amazon.hf_subsets == ["en"]  # mteb's registered class
    en = amazon.dataset["en"]
    assert (len(en["train"]), len(en["test"])) == (4018, 670) and Counter(en["test"]["label"]) == {0: 539, 1: 131}
    assert amazon.samples_per_label == 32 and amazon.n_experiments == 10

    tweets = load_validation_task("TweetEvalClassification", SHARED_DATA).task
    assert isinstance(tweets, AbsTaskClassification) and tweets.hf_subsets == ["emotion", "hate", "irony", "offensive"]
    sizes = {name: (len(split["train"]), len(split["test"])) for name, split in tweets.dataset.items()}
    assert sizes == {"emotion": (3257, 1421), "hate": (9000, 2970), "irony": (2862, 784), "offensive": (11916, 860)}
    assert set(tweets.dataset["emotion"]["test"]["label"]) == {0, 1, 2, 3}

    reviews = load_validation_task("CustomerReviewsClassification", SHARED_DATA).task
    assert reviews.is_cross_validation and reviews.train_split == "test"
    assert Counter(reviews.dataset["test"]["label"]) == {1: 1081, 0: 639}
    clusters = load_validation_task("CustomerReviewsClustering", SHARED_DATA).task
    assert isinstance(clusters, AbsTaskClustering) and clusters.metadata.main_score == "v_measure"
    test = clusters.dataset["default"]["test"]
    assert list(test["sentences"]) == list(reviews.dataset["test"]["text"])  # the same sentences: embedded once
    assert sorted(Counter(test["labels"]).values()) == [264, 343, 398, 715]  # phone, dvd, cameras, mp3 player

    twitter = load_validation_task("TwitterURLCorpus", SHARED_DATA).task
    assert isinstance(twitter, AbsTaskPairClassification) and type(twitter).__module__.startswith("mteb.tasks")
    assert Counter(twitter.dataset["default"]["test"]["labels"]) == {0: 7513, 1: 1821}

    for name, queries, candidates, positives in (("WikiQAReranking", 243, 2351, 293),
                                                 ("TrecQAReranking", 89, 1478, 284)):
        task = load_validation_task(name, SHARED_DATA).task
        split = task.dataset["default"]["test"]
        assert isinstance(task, AbsTaskRetrieval) and task.metadata.type == "Reranking"
        assert (len(split["queries"]), len(split["corpus"])) == (queries, candidates)
        assert sum(len(docs) for docs in split["relevant_docs"].values()) == positives
        assert sum(len(docs) for docs in split["top_ranked"].values()) == candidates

    nfcorpus = load_validation_task("NFCorpusOriginal", SHARED_DATA)
    split = nfcorpus.task.dataset["default"]["test"]
    assert (len(split["queries"]), len(split["corpus"])) == (323, 3162) and split["top_ranked"] is None
    assert sum(len(docs) for docs in split["relevant_docs"].values()) == 12334
    assert nfcorpus.task.metadata.main_score == "ndcg_at_10" and "stop-word filtered" in nfcorpus.note


@needs_data
def test_quick_subsets_are_seeded_stated_and_keep_every_judged_document():
    quick = load_validation_task("AmazonCounterfactualClassification", SHARED_DATA, limit=100, n_experiments=2)
    assert Counter(quick.task.dataset["en"]["test"]["label"]) == {0: 80, 1: 20}  # 539:131 kept
    assert quick.note.startswith("100 of 670 EN test texts (seeded random subset, seed 0, label shares kept)")
    assert "2 run(s)" in quick.note and quick.task.n_experiments == 2
    nfcorpus = load_validation_task("NFCorpusOriginal", SHARED_DATA, limit=5, corpus_limit=200)
    split = nfcorpus.task.dataset["default"]["test"]
    corpus = set(split["corpus"]["id"])
    assert len(split["queries"]) == 5 and all(doc in corpus for docs in split["relevant_docs"].values() for doc in docs)
    again = load_validation_task("NFCorpusOriginal", SHARED_DATA, limit=5, corpus_limit=200, seed=1)
    assert list(again.task.dataset["default"]["test"]["queries"]["id"]) != list(split["queries"]["id"])


def test_similarity_is_out_of_domain_only_when_the_recipe_did_not_train_on_it():
    tasks = list(VALIDATION_SUITE_TASKS)
    assert in_domain_tasks(tasks, ["SICK-R", "STSBenchmark", "SciFact"], True)[0] == ["STSBenchmark", "SICK-R"]
    assert in_domain_tasks(tasks, ["SciFact"], True)[0] == []  # a recipe without STS pairs: similarity counts
    assert in_domain_tasks(tasks, None, False)[0] == []  # no adapter: nothing trained
    chosen, why = in_domain_tasks(tasks, None, True)  # an adapter that does not say what it trained on
    assert chosen == ["STSBenchmark", "SICK-R"] and "records no train_splits_used" in why
    scores = {"AmazonCounterfactualClassification": 80.0, "TweetEvalClassification": 60.0, "TwitterURLCorpus": 70.0,
              "STSBenchmark": 10.0}
    assert ood_scores(scores, ["STSBenchmark"]) == {
        "ood_average": 70.0, "family_averages": {"classification": 70.0, "pair classification": 70.0, "similarity": 10.0}}
    assert ood_scores(scores, [])["ood_average"] == 55.0


def test_a_task_of_another_suite_is_refused_by_name():
    with pytest.raises(GEMConfigError, match="task 'TwitterURLCorpus' is not in suite 'quick'; it is in validation, "
                                             "validation-full"):
        split_tasks(["TwitterURLCorpus"], SUITES["quick"])
    with pytest.raises(GEMConfigError, match="task 'mmlu' is not in suite 'validation'; it is in quick, full"):
        split_tasks(["mmlu"], SUITES["validation"])
    assert split_tasks(["sick-r", "wikiqareranking"], SUITES["validation"]) == (["WikiQAReranking", "SICK-R"], [])
    assert split_tasks(None, SUITES["validation-full"]) == (list(VALIDATION_SUITE_TASKS), [])


def test_suite_sizes():
    quick, full = SUITES["validation"], SUITES["validation-full"]
    assert quick.mteb_tasks == full.mteb_tasks == VALIDATION_SUITE_TASKS and quick.lm_tasks == full.lm_tasks == ()
    assert (quick.amazon_test, quick.tweeteval_test, quick.review_sentences, quick.twitter_pairs, quick.wikiqa_questions,
            quick.trecqa_questions, quick.nfcorpus_queries, quick.nfcorpus_corpus, quick.sts_pairs,
            quick.embed_max_tokens) == (400, 120, 600, 600, 40, 30, 15, 300, 250, 128)
    assert full.amazon_test is None and full.twitter_pairs is None and full.nfcorpus_corpus is None
    assert quick.probe_runs == 5 and quick.probe_pool == 2000
    assert full.probe_runs is None and full.probe_pool is None and full.embed_max_tokens is None  # MTEB's 10 runs
    assert quick.capped(4).review_sentences == 10  # 5-fold cross-validation needs both polarities in every fold


@needs_data
def test_the_scorer_scores_any_model_without_a_run_folder(tmp_path):
    scorer = ValidationScorer(SHARED_DATA, tasks=["TwitterURLCorpus", "CustomerReviewsClustering", "STSBenchmark"],
                              limit=6, in_domain=["STSBenchmark"])
    gem = tiny_gem("llama")
    first, again = scorer(gem, out_dir=tmp_path), scorer(gem)
    assert first == again and set(first["scores"]) == {"TwitterURLCorpus", "CustomerReviewsClustering", "STSBenchmark"}
    assert first["ood_average"] == pytest.approx((first["scores"]["TwitterURLCorpus"]
                                                  + first["scores"]["CustomerReviewsClustering"]) / 2)
    assert first["in_domain_tasks"] == ["STSBenchmark"] and set(first["family_averages"]) == {
        "pair classification", "clustering", "similarity"}
    assert json.loads((tmp_path / "validation_scores.json").read_text())["scores"] == first["scores"]
    assert [p.name for p in tmp_path.iterdir()] == ["validation_scores.json"]

    class Hashing:  # anything with encode(texts): a seeded vector per text
        def encode(self, texts):
            return np.stack([np.random.default_rng(sum(map(ord, t))).normal(size=8) for t in texts])

    plain = scorer(Hashing())
    assert set(plain["scores"]) == set(first["scores"]) and plain["scores"] != first["scores"]


@needs_data
def test_tiny_model_validation_run_reports_the_ood_and_family_averages(tiny_model_folder, tmp_path):
    """The CI slice of ``gem eval --suite validation``: every task, four items each."""
    adapter = random_gem_adapter(tiny_model_folder, tmp_path / "adapter", seed=1)
    (adapter / "train_summary.json").write_text(json.dumps({"train_splits_used": ["SICK-R", "STSBenchmark", "SciFact"]}))
    out = tmp_path / "val"
    args = ["--base", str(tiny_model_folder), "--adapter", str(adapter), "--suite", "validation", "--baselines",
            "prompteol", "--data-dir", str(SHARED_DATA), "--limit", "4"]
    result = CliRunner().invoke(eval_command, args + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert ("Model | AmazonCF | TweetEval | CR | TwitterURL | WikiQA | TrecQA | NFCorpus | CR clust | STSB* | SICK-R* "
            "| OOD avg") in result.output
    assert ("Model | classification | pair classification | reranking | retrieval | clustering | similarity* | OOD avg"
            in result.output)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["in_domain_tasks"] == ["STSBenchmark", "SICK-R"] and summary["out_of_domain"]["tasks"] == list(
        VALIDATION_SUITE_TASKS[:8])
    for row in summary["models"]:
        scores = row["mteb"]
        assert row["ood_average"] == pytest.approx(np.mean([scores[t] for t in VALIDATION_SUITE_TASKS[:8]]))
        assert row["family_averages"]["reranking"] == pytest.approx(
            (scores["WikiQAReranking"] + scores["TrecQAReranking"]) / 2)
        assert row["family_averages"]["similarity"] == pytest.approx((scores["STSBenchmark"] + scores["SICK-R"]) / 2)
        assert set(row["mteb_details"]["TweetEvalClassification"]["subsets"]) == {"emotion", "hate", "irony", "offensive"}
    report = (out / "report.md").read_text()
    assert "## By family" in report and "Columns marked * are in-domain and left out of it" in report
    assert "- TwitterURLCorpus: 4 of 9,334 pairs of the untokenised test file" in report

    # a second adapter takes the PromptEOL row from the first run; only its own row is computed
    other = random_gem_adapter(tiny_model_folder, tmp_path / "other", seed=2)
    second = CliRunner().invoke(eval_command, args[:2] + ["--adapter", str(other)] + args[4:]
                                + ["--out", str(tmp_path / "val2"), "--baselines-from", str(out)])
    assert second.exit_code == 0, second.output
    summary2 = json.loads((tmp_path / "val2" / "summary.json").read_text())
    assert summary2["copied"]["rows"] == ["prompteol"] and summary2["models"][0]["mteb"] == summary["models"][0]["mteb"]
    assert summary2["in_domain_tasks"] == ["STSBenchmark", "SICK-R"]  # no record: similarity not counted as OOD
    refused = CliRunner().invoke(eval_command, args[:6] + ["--suite", "quick", "--tasks", "STSBenchmark", "--data-dir",
                                                           str(SHARED_DATA), "--limit", "4", "--out",
                                                           str(tmp_path / "val3"), "--baselines-from", str(out)])
    assert refused.exit_code == 1 and "it ran with suite 'validation', this call has 'quick'" in refused.output


@needs_data
def test_a_missing_validation_file_is_refused_in_one_line_before_any_model_loads(tiny_model_folder, tmp_path):
    data = tmp_path / "data"
    (data / "validation").mkdir(parents=True)
    for folder in (SHARED_DATA / "validation").iterdir():
        if folder.name != "twitter_url_corpus":
            (data / "validation" / folder.name).symlink_to(folder)
    (data / "sts").symlink_to(SHARED_DATA / "sts")
    out = tmp_path / "val"
    result = CliRunner().invoke(eval_command, ["--base", str(tiny_model_folder), "--suite", "validation", "--out", str(out),
                                               "--data-dir", str(data), "--limit", "4"])
    missing = data / "validation" / "twitter_url_corpus" / "Twitter_URL_Corpus_testNew.larger.txt"
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith(f"Error: TwitterURLCorpus needs {missing}, which does not exist; ")
    assert not out.exists()
