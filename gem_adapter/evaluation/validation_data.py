"""Readers for the out-of-domain validation sets in ``<data dir>/validation/`` (plain Python, no mteb).

Each reader turns one set's files, as their SOURCE.md describes them, into rows; nothing
here samples or scores (``validation_tasks`` does). The sets are never training data: a
classification set's train split only fits mteb's logistic-regression probe on frozen
embeddings, as MTEB does.

| reader | set | rows |
|---|---|---|
| ``read_amazon_counterfactual`` | Amazon Counterfactual EN (TSV) | ``{"text", "label"}`` |
| ``read_tweeteval`` | TweetEval, one subtask and split (aligned text / label lines) | ``{"text", "label"}`` |
| ``read_customer_reviews`` | Hu & Liu's 5-product reviews (NLTK zip) | ``{"text", "label", "category"}`` |
| ``read_twitter_url_pairs`` | Twitter URL Corpus test file | ``{"sentence1", "sentence2", "label"}`` |
| ``read_wikiqa`` / ``read_trecqa`` | answer selection | ``{"id", "question", "candidates": [(text, label)]}`` |
| ``read_nfcorpus`` | NFCorpus original release, test | docs, queries, qrels |
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path
from typing import Any

from ..errors import GEMError

TWEETEVAL_SUBTASKS: tuple[str, ...] = ("emotion", "hate", "irony", "offensive")
# the product category of each review file, as the set's README lists them; the two cameras share one
CUSTOMER_REVIEW_CATEGORIES: dict[str, str] = {
    "Canon_G3.txt": "digital camera",
    "Nikon_coolpix_4300.txt": "digital camera",
    "Nokia_6610.txt": "cellular phone",
    "Creative_Labs_Nomad_Jukebox_Zen_Xtra_40GB.txt": "mp3 player",
    "Apex_AD2600_Progressive_scan_DVD player.txt": "dvd player",
}
CATEGORY_NAMES: tuple[str, ...] = ("cellular phone", "digital camera", "dvd player", "mp3 player")
# an opinion mark in the feature part of an annotated line: [+2], [-3], [+] (no strength: 1)
_OPINION = re.compile(r"\[([+-])(\d?)")
# a Twitter URL Corpus vote field, "(n,6)": n of 6 annotators said paraphrase
_VOTES = re.compile(r"^\((\d),(\d)\)$")


def lines_of(path: Path) -> list[str]:
    """A file's lines cut at ``\\n`` only (``str.splitlines`` also cuts at U+2028 and the like,
    which tweets contain), a final newline adding no line, ``\\r`` kept out."""
    text = path.read_bytes().decode("utf-8")
    pieces = text.split("\n")
    if pieces and pieces[-1] == "":
        pieces.pop()
    return [piece.removesuffix("\r") for piece in pieces]


def read_amazon_counterfactual(path: Path) -> list[dict[str, Any]]:
    """Rows of an ``EN_<split>.tsv`` file: ``sentence`` -> text, ``is_counterfactual`` (0/1) -> label."""
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, record in enumerate(csv.DictReader(handle, delimiter="\t"), 2):
            label = (record.get("is_counterfactual") or "").strip()
            if label not in ("0", "1") or record.get("sentence") is None:
                raise GEMError(f"{path}:{number}: expected 'sentence<TAB>0|1', got {record!r}")
            rows.append({"text": record["sentence"], "label": int(label)})
    return rows


def read_tweeteval(folder: Path, subtask: str, split: str) -> list[dict[str, Any]]:
    """Rows of ``<subtask>_<split>_text.txt`` with the aligned labels of ``<subtask>_<split>_labels.txt``."""
    texts = lines_of(folder / f"{subtask}_{split}_text.txt")
    labels = lines_of(folder / f"{subtask}_{split}_labels.txt")
    if len(texts) != len(labels):
        raise GEMError(f"{folder}: {subtask} {split} has {len(texts)} texts and {len(labels)} labels; "
                       "the two files must be aligned line by line")
    return [{"text": text.strip(), "label": int(label)} for text, label in zip(texts, labels)]


def tweeteval_label_names(folder: Path, subtask: str) -> list[str]:
    """The label names of a subtask (``<subtask>_mapping.txt``: ``id<TAB>name``), by id."""
    names = dict(line.split("\t", 1) for line in lines_of(folder / f"{subtask}_mapping.txt") if line.strip())
    return [names[key].strip() for key in sorted(names, key=int)]


def read_customer_reviews(path: Path) -> list[dict[str, Any]]:
    """Sentences of the five products with a polarity: 1 positive, 0 negative.

    A line ``feature[+2],other[-1]##sentence`` carries opinions on features; its polarity is
    the sign of the summed strengths (a mark without a strength counts 1). Lines without an
    opinion mark, and the few whose marks cancel out, are left out. ``category`` is the
    product's kind (``CUSTOMER_REVIEW_CATEGORIES``).
    """
    rows = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            category = CUSTOMER_REVIEW_CATEGORIES.get(Path(name).name)
            if category is None:
                continue
            for line in io.TextIOWrapper(archive.open(name), encoding="latin-1"):
                features, separator, sentence = line.rstrip("\r\n").partition("##")
                if not separator or not sentence.strip():
                    continue
                strength = sum((1 if sign == "+" else -1) * int(value or 1)
                               for sign, value in _OPINION.findall(features))
                if strength:
                    rows.append({"text": sentence.strip(), "label": int(strength > 0), "category": category})
    found = {row["category"] for row in rows}
    if found != set(CATEGORY_NAMES):
        raise GEMError(f"{path} holds review sentences for {sorted(found)}; expected the five product files of "
                       "NLTK's product_reviews_1.zip")
    return rows


def read_twitter_url_pairs(path: Path) -> list[dict[str, Any]]:
    """Pairs of ``Twitter_URL_Corpus_testNew.larger.txt`` with the corpus's own labelling: paraphrase (1)
    when at least 4 of 6 annotators said so, not (0) when at most 2; the 3-of-6 pairs are left out."""
    rows = []
    for number, line in enumerate(lines_of(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        votes = _VOTES.match(fields[2].strip()) if len(fields) >= 4 else None
        if votes is None:
            raise GEMError(f"{path}:{number}: expected 'sentence1<TAB>sentence2<TAB>(n,6)<TAB>url'")
        agreeing = int(votes.group(1))
        if agreeing == 3:
            continue
        rows.append({"sentence1": fields[0].strip(), "sentence2": fields[1].strip(), "label": int(agreeing >= 4)})
    return rows


def read_wikiqa(folder: Path) -> list[dict[str, Any]]:
    """WikiQA test questions in file order, each with its candidate sentences and 0/1 labels."""
    ids, questions = lines_of(folder / "test_id.txt"), lines_of(folder / "test_a.toks")
    answers, labels = lines_of(folder / "test_b.toks"), lines_of(folder / "test_sim.txt")
    if not len(ids) == len(questions) == len(answers) == len(labels):
        raise GEMError(f"{folder}: test_id.txt, test_a.toks, test_b.toks and test_sim.txt must have one line per pair")
    grouped: dict[str, dict[str, Any]] = {}
    for qid, question, answer, label in zip(ids, questions, answers, labels):
        entry = grouped.setdefault(qid.strip(), {"id": f"wikiqa-{qid.strip()}", "question": question.strip(),
                                                 "candidates": []})
        entry["candidates"].append((answer.strip(), int(label)))
    return list(grouped.values())


def read_trecqa(path: Path) -> list[dict[str, Any]]:
    """TrecQA questions of a ``<QApairs>`` file, each with its positive (1) and negative (0)
    candidates; a block's first line holds its tab-separated tokens, joined here by spaces."""
    questions: list[dict[str, Any]] = []
    lines = lines_of(path)
    for index, line in enumerate(lines):
        tag = line.strip()
        if tag.startswith("<QApairs"):
            found = re.search(r"id='([^']+)'", tag)
            questions.append({"id": f"trecqa-{found.group(1) if found else len(questions)}", "question": None,
                              "candidates": []})
        elif tag in ("<question>", "<positive>", "<negative>"):
            if not questions or index + 1 >= len(lines):
                raise GEMError(f"{path}:{index + 1}: {tag} outside a <QApairs> block")
            text = " ".join(token for token in lines[index + 1].split("\t") if token)
            if tag == "<question>":
                questions[-1]["question"] = text
            else:
                questions[-1]["candidates"].append((text, int(tag == "<positive>")))
    if any(q["question"] is None for q in questions):
        raise GEMError(f"{path}: a <QApairs> block has no <question>")
    return questions


def read_nfcorpus(folder: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """NFCorpus test: documents ``{id: text}``, title queries ``{id: text}`` and graded
    judgments ``{query id: {doc id: 2 or 1}}`` (``test.2-1-0.qrel``; 0 is not relevant)."""
    docs = dict(_two_fields(folder / "test.docs"))
    queries = dict(_two_fields(folder / "test.titles.queries"))
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines_of(folder / "test.2-1-0.qrel"), 1):
        fields = line.split()
        if len(fields) != 4:
            raise GEMError(f"{folder / 'test.2-1-0.qrel'}:{number}: expected 'query 0 document relevance'")
        if int(fields[3]) > 0:
            qrels.setdefault(fields[0], {})[fields[2]] = int(fields[3])
    return docs, queries, qrels


def _two_fields(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(lines_of(path), 1):
        key, separator, text = line.partition("\t")
        if not separator:
            raise GEMError(f"{path}:{number}: expected 'ID<TAB>TEXT'")
        pairs.append((key.strip(), text.strip()))
    return pairs
