"""Out-of-domain validation tasks: the sets in ``<data dir>/validation/`` inside mteb's task classes.

As ``tasks`` does for the suite, every set is injected into an mteb task (``task.dataset``
filled, ``task.data_loaded = True``), so mteb's own evaluators score it offline. Where mteb
registers a task for the same data, it is that class: ``AmazonCounterfactualClassification``
(its ``en`` subset) and ``TwitterURLCorpus``. The others are mteb's abstract task classes
with our own ``TaskMetadata``, as ``Banking77Clustering`` is:

| task | mteb class | main score | what is scored |
|---|---|---|---|
| AmazonCounterfactualClassification | registered | accuracy | EN test; probe fit on EN train |
| TweetEvalClassification | AbsTaskClassification | accuracy | emotion, hate, irony, offensive test (mean) |
| CustomerReviewsClassification | AbsTaskClassification, cross-validated | accuracy | CR sentence polarity |
| TwitterURLCorpus | registered | max AP | paraphrase pairs of the test file |
| WikiQAReranking, TrecQAReranking | AbsTaskRetrieval (Reranking) | MAP | each question's candidates |
| NFCorpusOriginal | AbsTaskRetrieval | nDCG@10 | title queries over the test documents |
| CustomerReviewsClustering | AbsTaskClustering | V-measure | CR sentences by product kind |

Subsets are seeded; classification-like ones keep the label shares (``proportional``);
every loaded task carries a note stating its sizes.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from ..errors import GEMConfigError
from . import validation_data as data
from .tasks import LoadedTask, _count_note, _subsample, require_files, resolve_data_dir

VALIDATION_TASKS: tuple[str, ...] = (
    "AmazonCounterfactualClassification", "TweetEvalClassification", "CustomerReviewsClassification",
    "TwitterURLCorpus", "WikiQAReranking", "TrecQAReranking", "NFCorpusOriginal", "CustomerReviewsClustering",
)
_V = "validation/"
VALIDATION_FILES: dict[str, tuple[str, ...]] = {
    "AmazonCounterfactualClassification": (f"{_V}amazon_counterfactual_en/EN_train.tsv",
                                           f"{_V}amazon_counterfactual_en/EN_test.tsv"),
    "TweetEvalClassification": tuple(f"{_V}tweeteval/{subtask}_{part}.txt" for subtask in data.TWEETEVAL_SUBTASKS
                                     for part in ("mapping", "train_text", "train_labels", "test_text", "test_labels")),
    "CustomerReviewsClassification": (f"{_V}cr_product_reviews/product_reviews_1.zip",),
    "TwitterURLCorpus": (f"{_V}twitter_url_corpus/Twitter_URL_Corpus_testNew.larger.txt",),
    "WikiQAReranking": tuple(f"{_V}wikiqa/test_{part}" for part in ("id.txt", "a.toks", "b.toks", "sim.txt")),
    "TrecQAReranking": (f"{_V}trecqa/TEST.xml",),
    "NFCorpusOriginal": tuple(f"{_V}nfcorpus_original/test.{part}" for part in ("docs", "titles.queries", "2-1-0.qrel")),
    "CustomerReviewsClustering": (f"{_V}cr_product_reviews/product_reviews_1.zip",),
}
CR_FOLDS = 5  # mteb's AbsTaskClassification default n_splits; SentEval used 10
TWEETEVAL_SAMPLES_PER_LABEL = 16  # as mteb's EmotionClassification (tweets, few labels)


def canonical_validation_task(name: str) -> str:
    """The exact name of a validation task (case-insensitive), or a ``GEMConfigError``."""
    for known in VALIDATION_TASKS:
        if name.strip().lower() == known.lower():
            return known
    raise GEMConfigError(f"unknown validation task {name!r}; choose from {', '.join(VALIDATION_TASKS)}")


def load_validation_task(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    n_experiments: int | None = None,
    corpus_limit: int | None = None,
    train_limit: int | None = None,
) -> LoadedTask:
    """Build validation task ``name`` from the offline files, optionally subsampled.

    ``limit`` caps test texts (classification: per TweetEval subtask; Customer Reviews: all
    sentences, as both its tasks draw the same ones), pairs (Twitter URL), questions
    (reranking) or queries (NFCorpus); ``corpus_limit`` caps NFCorpus's documents (every judged
    document of the kept queries stays); ``n_experiments`` sets the classifier runs
    (Amazon, TweetEval; MTEB: 10) or k-means runs (clustering; MTEB: 10); ``train_limit`` caps
    the train texts a probe draws from (Amazon; TweetEval per subtask), a seeded subset with the
    label shares kept: mteb's draw walks the whole split once per run, slow on 12k tweets.
    """
    name = canonical_validation_task(name)
    directory = resolve_data_dir(data_dir)
    paths = require_files(name, directory, VALIDATION_FILES[name])
    builders = {
        "AmazonCounterfactualClassification": _amazon_counterfactual,
        "TweetEvalClassification": _tweeteval,
        "CustomerReviewsClassification": _customer_reviews,
        "CustomerReviewsClustering": _customer_reviews_clustering,
        "TwitterURLCorpus": _twitter_url,
        "WikiQAReranking": _reranking,
        "TrecQAReranking": _reranking,
        "NFCorpusOriginal": _nfcorpus,
    }
    task, dataset, note = builders[name](name, paths, limit=limit, seed=seed, n_experiments=n_experiments,
                                         corpus_limit=corpus_limit, train_limit=train_limit)
    task.dataset = dataset
    task.data_loaded = True
    return LoadedTask(name=name, task=task, note=note)


def proportional(keys: Sequence[Hashable], limit: int | None, seed: int) -> list[int]:
    """Sorted indices of a seeded subset of ``limit`` items whose keys (labels) keep their shares
    (largest remainder), every key at least once when ``limit`` allows; all when no limit."""
    if limit is None or limit >= len(keys):
        return list(range(len(keys)))
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    order = sorted(groups, key=str)
    exact = {key: limit * len(groups[key]) / len(keys) for key in order}
    quota = {key: min(len(groups[key]), max(1, int(exact[key]))) for key in order}
    by_remainder = sorted(order, key=lambda key: (exact[key] - int(exact[key]), len(groups[key])), reverse=True)
    while sum(quota.values()) < limit:
        key = next(k for k in by_remainder if quota[k] < len(groups[k]))
        quota[key] += 1
        by_remainder.append(by_remainder.pop(by_remainder.index(key)))
    while sum(quota.values()) > limit:
        quota[max(order, key=lambda k: quota[k])] -= 1
    rng = random.Random(seed)
    return sorted(index for key in order for index in rng.sample(groups[key], quota[key]))


# ---------------------------------------------------------------- classification
def _probe_pool(train: list[dict[str, Any]], train_limit: int | None, seed: int) -> tuple[list[dict[str, Any]], str]:
    """The train texts a probe draws from: all, or a seeded subset with the label shares kept."""
    pool = [train[i] for i in proportional([row["label"] for row in train], train_limit, seed)]
    return pool, (f"{len(pool):,}" if len(pool) == len(train) else f"a seeded {len(pool):,} of the {len(train):,}")


def _amazon_counterfactual(name, paths, *, limit, seed, n_experiments, train_limit, **_):
    import mteb
    from datasets import Dataset, DatasetDict

    train_path, test_path = paths
    train, test = data.read_amazon_counterfactual(train_path), data.read_amazon_counterfactual(test_path)
    kept = [test[i] for i in proportional([row["label"] for row in test], limit, seed)]
    pool, pool_note = _probe_pool(train, train_limit, seed)
    task = mteb.get_task(name, eval_splits=["test"], hf_subsets=["en"])
    if n_experiments is not None:
        task.n_experiments = int(n_experiments)
    note = (_count_note(len(kept), len(test), "EN test texts", seed, "label shares kept")
            + f"; logistic regression fit on {task.samples_per_label} texts per label drawn from {pool_note} EN train "
              f"texts, {task.n_experiments} run(s)")
    return task, {"en": DatasetDict({"train": Dataset.from_list(pool), "test": Dataset.from_list(kept)})}, note


def _tweeteval(name, paths, *, limit, seed, n_experiments, train_limit, **_):
    from datasets import Dataset, DatasetDict

    folder = paths[0].parent
    task = _task_class(name)()
    if n_experiments is not None:
        task.n_experiments = int(n_experiments)
    dataset, sizes, pools = {}, [], []
    for subtask in data.TWEETEVAL_SUBTASKS:
        train, test = data.read_tweeteval(folder, subtask, "train"), data.read_tweeteval(folder, subtask, "test")
        kept = [test[i] for i in proportional([row["label"] for row in test], limit, seed)]
        pool, _ = _probe_pool(train, train_limit, seed)
        pools.append(len(pool))
        dataset[subtask] = DatasetDict({"train": Dataset.from_list(pool), "test": Dataset.from_list(kept)})
        labels = len(data.tweeteval_label_names(folder, subtask))
        sizes.append(f"{subtask} {len(kept):,}" + ("" if len(kept) == len(test) else f" of {len(test):,}")
                     + f" ({labels} labels)")
    how = "all test tweets" if limit is None else f"seeded subsets (seed {seed}, label shares kept)"
    note = (f"subtasks with train and test splits (sentiment has no train texts here), {how}: " + ", ".join(sizes)
            + f"; accuracy averaged over the 4 subtasks; logistic regression fit on {task.samples_per_label} train "
              f"tweets per label, {task.n_experiments} run(s)"
            + ("" if train_limit is None else f", drawn from a seeded {' / '.join(sorted({f'{n:,}' for n in pools}))} "
               "of each subtask's train tweets"))
    return task, dataset, note


def _customer_review_rows(path: Path, limit: int | None, seed: int) -> tuple[list[dict[str, Any]], str]:
    """The CR sentences both CR tasks use: the same seeded subset, kind and polarity shares kept."""
    rows = data.read_customer_reviews(path)
    kept = [rows[i] for i in proportional([(row["category"], row["label"]) for row in rows], limit, seed)]
    return kept, _count_note(len(kept), len(rows), "review sentences with a polarity", seed,
                             "product kind and polarity shares kept")


def _customer_reviews(name, paths, *, limit, seed, **_):
    from datasets import Dataset, DatasetDict

    kept, note = _customer_review_rows(paths[0], limit, seed)
    task = _task_class(name)()
    positive = sum(row["label"] for row in kept)
    note += (f"; {positive:,} positive, {len(kept) - positive:,} negative (the sign of the summed [+n]/[-n] "
             f"opinion marks); {task.n_splits}-fold cross-validation (mteb's, seeded), logistic regression fit on "
             "every sentence of the other folds")
    dataset = DatasetDict({"test": Dataset.from_list([{"text": row["text"], "label": row["label"]} for row in kept])})
    return task, dataset, note


def _customer_reviews_clustering(name, paths, *, limit, seed, n_experiments, **_):
    from datasets import Dataset, DatasetDict

    kept, note = _customer_review_rows(paths[0], limit, seed)
    task = _task_class(name)()
    if n_experiments is not None:
        task.n_clusters = int(n_experiments)
    label_of = {category: index for index, category in enumerate(data.CATEGORY_NAMES)}
    labels = [label_of[row["category"]] for row in kept]
    note += (f", {len(set(labels))} product kinds ({', '.join(data.CATEGORY_NAMES)}); {task.n_clusters} k-means "
             f"run(s) (MiniBatchKMeans, k = {len(set(labels))}), each on {task.max_documents_per_cluster:,} texts "
             "drawn with replacement; V-measure averaged")
    dataset = DatasetDict({"test": Dataset.from_dict({"sentences": [row["text"] for row in kept], "labels": labels})})
    return task, {"default": dataset}, note


# ---------------------------------------------------------------- pairs, reranking, retrieval
def _twitter_url(name, paths, *, limit, seed, **_):
    import mteb
    from datasets import Dataset, DatasetDict

    pairs = data.read_twitter_url_pairs(paths[0])
    kept = [pairs[i] for i in proportional([pair["label"] for pair in pairs], limit, seed)]
    positive = sum(pair["label"] for pair in kept)
    note = (_count_note(len(kept), len(pairs), "pairs of the untokenised test file", seed, "label shares kept")
            + f"; {positive:,} paraphrases (>= 4 of 6 annotators; <= 2 is not one, 3 is left out); main score "
              "max AP over mteb's similarity functions")
    task = mteb.get_task(name, eval_splits=["test"])
    dataset = Dataset.from_dict({"sentence1": [p["sentence1"] for p in kept], "sentence2": [p["sentence2"] for p in kept],
                                 "labels": [p["label"] for p in kept]})
    return task, {"default": DatasetDict({"test": dataset})}, note


def _reranking(name, paths, *, limit, seed, **_):
    from datasets import Dataset

    if name == "WikiQAReranking":
        questions, source = data.read_wikiqa(paths[0].parent), "WikiQA test"
    else:
        questions, source = data.read_trecqa(paths[0]), "TrecQA raw TEST"
    answerable = [q for q in questions if any(label for _, label in q["candidates"])]
    kept = [answerable[i] for i in _subsample(len(answerable), limit, seed)]
    corpus, top_ranked, relevant = [], {}, {}
    for question in kept:
        ids = [f"{question['id']}-{number}" for number in range(len(question["candidates"]))]
        corpus += [{"id": doc, "title": "", "text": text} for doc, (text, _) in zip(ids, question["candidates"])]
        top_ranked[question["id"]] = ids
        relevant[question["id"]] = {doc: 1 for doc, (_, label) in zip(ids, question["candidates"]) if label}
    unanswerable = len(questions) - len(answerable)
    note = (_count_note(len(kept), len(answerable), f"{source} questions with a correct answer", seed)
            + (f" ({unanswerable} without one left out)" if unanswerable else "")
            + f"; {len(corpus):,} candidate sentences, each question's ranked among its own; MAP (mteb's "
              "map_at_1000), MRR@10 under Details")
    split = {"corpus": Dataset.from_list(corpus),
             "queries": Dataset.from_list([{"id": q["id"], "text": q["question"]} for q in kept]),
             "relevant_docs": relevant, "top_ranked": top_ranked}
    return _task_class(name)(), {"default": {"test": split}}, note


def _nfcorpus(name, paths, *, limit, seed, corpus_limit, **_):
    from datasets import Dataset

    docs, queries, qrels = data.read_nfcorpus(paths[0].parent)
    judged = sorted(query for query in qrels if query in queries)
    kept = [judged[i] for i in _subsample(len(judged), limit, seed)]
    needed = {doc for query in kept for doc in qrels[query]}
    doc_ids = list(docs)
    if corpus_limit is not None and corpus_limit < len(doc_ids):
        others = [doc for doc in doc_ids if doc not in needed]
        extra = set(random.Random(seed + 1).sample(others, min(max(corpus_limit - len(needed), 0), len(others))))
        doc_ids = [doc for doc in doc_ids if doc in needed or doc in extra]
    note = (_count_note(len(kept), len(judged), "judged title queries", seed)
            + (f"; corpus {len(doc_ids):,} of {len(docs):,} test documents (every judged one of the kept queries "
               "+ seeded random distractors)" if len(doc_ids) < len(docs) else f"; all {len(docs):,} test documents")
            + "; texts lowercased and stop-word filtered by the release, so not comparable with MTEB's NFCorpus")
    split = {"corpus": Dataset.from_list([{"id": doc, "title": "", "text": docs[doc]} for doc in doc_ids]),
             "queries": Dataset.from_list([{"id": query, "text": queries[query]} for query in kept]),
             "relevant_docs": {query: dict(qrels[query]) for query in kept}, "top_ranked": None}
    return _task_class(name)(), {"default": {"test": split}}, note


# ---------------------------------------------------------------- task classes (built once)
_CLASSES: dict[str, type] = {}


def _task_class(name: str) -> type:
    """mteb's abstract task class for ``name`` with our metadata (built on first use: imports mteb)."""
    if name not in _CLASSES:
        _CLASSES[name] = _build_class(name)
    return _CLASSES[name]


def _metadata(**fields: Any):
    from mteb.abstasks.task_metadata import TaskMetadata

    common = {"modalities": ["text"], "eval_splits": ["test"], "eval_langs": ["eng-Latn"], "dialect": [],
              "sample_creation": "found"}
    return TaskMetadata(**{**common, **fields})


def _build_class(name: str) -> type:
    import mteb
    from mteb.abstasks.classification import AbsTaskClassification
    from mteb.abstasks.clustering import AbsTaskClustering
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    castorini = {"path": "https://github.com/castorini/data", "revision": "056cbbcbf997cc0b35032430110c5e5e5525700a"}
    reviews = {"path": "https://github.com/nltk/nltk_data (packages/corpora/product_reviews_1.zip)",
               "revision": "5db857e6f7df11eabb5e5665836db9ec8df07e28"}
    hu_liu = ("@inproceedings{hu2004mining,\n  author = {Hu, Minqing and Liu, Bing},\n  booktitle = {Proceedings of "
              "KDD 2004},\n  title = {Mining and Summarizing Customer Reviews},\n  year = {2004},\n}")
    answer_selection = {"type": "Reranking", "category": "t2t", "main_score": "map_at_1000",
                        "task_subtypes": ["Question answering"], "annotations_creators": "human-annotated",
                        "dataset": castorini}
    if name == "TweetEvalClassification":
        class TweetEvalClassification(AbsTaskClassification):
            metadata = _metadata(
                name=name, description="TweetEval tweet classification: emotion (4 labels), hate, irony, offensive.",
                reference="https://github.com/cardiffnlp/tweeteval", type="Classification", category="t2c",
                dataset={"path": "https://github.com/cardiffnlp/tweeteval", "revision": "4fbd22cd78421f05b1ecdb4fc5725bc7a7bd8f66"},
                eval_langs={subtask: ["eng-Latn"] for subtask in data.TWEETEVAL_SUBTASKS}, main_score="accuracy",
                date=("2009-01-01", "2019-12-31"), domains=["Social", "Written"], task_subtypes=["Sentiment/Hate speech"],
                license="not specified", annotations_creators="human-annotated",
                bibtex_citation="@inproceedings{barbieri2020tweeteval,\n  author = {Barbieri, Francesco and others},\n  "
                                "booktitle = {Findings of EMNLP 2020},\n  title = {TweetEval: Unified Benchmark and "
                                "Comparative Evaluation for Tweet Classification},\n  year = {2020},\n}",
                prompt="Classify the emotion, hate speech, irony or offensiveness of the given tweet")
            samples_per_label = TWEETEVAL_SAMPLES_PER_LABEL
        return TweetEvalClassification
    if name == "CustomerReviewsClassification":
        class CustomerReviewsClassification(AbsTaskClassification):
            metadata = _metadata(
                name=name, description="Polarity of product review sentences (Hu & Liu's 5 products, the source of SentEval CR).",
                reference="https://www.cs.uic.edu/~liub/FBS/sentiment-analysis.html", type="Classification", category="t2c",
                dataset=reviews, main_score="accuracy", date=("2004-01-01", "2004-12-31"), domains=["Reviews", "Written"],
                task_subtypes=["Sentiment/Hate speech"], license="cc-by-4.0", annotations_creators="derived",
                bibtex_citation=hu_liu, prompt="Classify the sentiment of the given product review sentence")
            is_cross_validation = True
            n_splits = CR_FOLDS
            train_split = "test"  # mteb's cross-validation folds the one split it evaluates
            samples_per_label = 10**9  # every sentence of the training folds
        return CustomerReviewsClassification
    if name == "CustomerReviewsClustering":
        class CustomerReviewsClustering(AbsTaskClustering):
            metadata = _metadata(
                name=name, description="Clustering of product review sentences by the kind of product reviewed "
                                       "(digital camera, cellular phone, mp3 player, dvd player).",
                reference="https://www.cs.uic.edu/~liub/FBS/sentiment-analysis.html", type="Clustering", category="t2c",
                dataset=reviews, main_score="v_measure", date=("2004-01-01", "2004-12-31"), domains=["Reviews", "Written"],
                task_subtypes=["Thematic clustering"], license="cc-by-4.0", annotations_creators="derived",
                bibtex_citation=hu_liu, prompt="Identify the kind of product the review sentence is about",
                adapted_from=["CustomerReviewsClassification"])
            max_fraction_of_documents_to_embed = None
        return CustomerReviewsClustering
    if name == "WikiQAReranking":
        class WikiQAReranking(AbsTaskRetrieval):
            metadata = _metadata(
                name=name, description="WikiQA answer sentence selection: rank a question's Wikipedia sentences.",
                reference="https://aclanthology.org/D15-1237/", date=("2015-01-01", "2015-12-31"),
                domains=["Encyclopaedic", "Written"], license="msr-la-nc",
                bibtex_citation="@inproceedings{yang2015wikiqa,\n  author = {Yang, Yi and Yih, Wen-tau and Meek, "
                                "Christopher},\n  booktitle = {EMNLP 2015},\n  title = {WikiQA: A Challenge Dataset for "
                                "Open-Domain Question Answering},\n  year = {2015},\n}",
                prompt="Given a question, retrieve the sentence that answers it", **answer_selection)
        return WikiQAReranking
    if name == "TrecQAReranking":
        class TrecQAReranking(AbsTaskRetrieval):
            metadata = _metadata(
                name=name, description="TrecQA answer sentence selection (raw TEST): rank a question's candidate sentences.",
                reference="https://aclanthology.org/D07-1003/", date=("2007-01-01", "2013-12-31"),
                domains=["News", "Written"], license="not specified",
                bibtex_citation="@inproceedings{wang2007jeopardy,\n  author = {Wang, Mengqiu and Smith, Noah A. and "
                                "Mitamura, Teruko},\n  booktitle = {EMNLP-CoNLL 2007},\n  title = {What is the Jeopardy "
                                "Model? A Quasi-Synchronous Grammar for QA},\n  year = {2007},\n}",
                prompt="Given a question, retrieve the sentence that answers it", **answer_selection)
        return TrecQAReranking
    if name == "NFCorpusOriginal":
        source = mteb.get_task("NFCorpus").metadata

        class NFCorpusOriginal(AbsTaskRetrieval):
            metadata = _metadata(
                name=name, description="NFCorpus, original release: nutrition title queries over medical abstracts "
                                       "(lowercased, stop-word filtered texts).",
                reference=source.reference, type="Retrieval", category="t2t", main_score="ndcg_at_10",
                dataset={"path": "https://github.com/hakimamarullah/medisearch-api (data/nfcorpus)",
                         "revision": "0ae71a4bb2416506dbdd9a5f8894e7830b99f19f"},
                date=source.date, domains=list(source.domains or []), task_subtypes=[], license="not specified",
                annotations_creators=source.annotations_creators, bibtex_citation=source.bibtex_citation,
                prompt="Given a question, retrieve relevant documents that best answer the question",
                adapted_from=["NFCorpus"])
        return NFCorpusOriginal
    raise GEMConfigError(f"no task class for {name!r}")
