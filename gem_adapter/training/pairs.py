"""Supervised pairs: a JSONL format, a strict reader, and a builder from benchmark train splits.

One JSON object per line::

    {"anchor": "A plane is taking off.", "positive": "An air plane is taking off.",
     "negative": "A man is slicing a tomato.", "source": "STSBenchmark train", "label": "..."}

``anchor`` and ``positive`` are required non-empty strings; ``negative`` (a hard negative
for this anchor), ``source`` (the data set and split the pair comes from) and ``label``
(pairs sharing a label are never used as each other's in-batch negatives, e.g. two
Banking77 texts of one intent) are optional. ``read_pairs`` checks every line before it
returns anything; an error names the file, the line and the fix.

``build_pairs(data_dir)`` builds pairs from the **train** splits of the shared benchmark
copies (``../shared/data``, see its README), never from a dev, trial or test split:

| source | train split | pair |
|---|---|---|
| ``sts`` | STSBenchmark ``sts-train.csv`` | sentence1 -> sentence2 where score >= 4.0 |
| ``sick`` | SICK ``SICK_train.txt`` | sentence_A -> sentence_B judged ENTAILMENT; negative: a B judged CONTRADICTION for the same A |
| ``scifact`` | SciFact ``claims_train.csv`` + ``corpus.jsonl`` | claim -> title + text of each cited abstract (cut near 1,000 characters) |
| ``banking`` | Banking77 ``train.csv`` | a text -> another text of the same intent, up to 16 disjoint pairs per intent |

General-domain sources (``GENERAL_SOURCES``), already pairs JSONL under ``<data>/train/<name>/pairs.jsonl``
(see that folder's README): ``snli`` (SNLI premise -> entailed hypothesis, a contradiction as the
negative), ``mrpc`` (MRPC train paraphrases), ``coco`` (two captions of one COCO image, the image id
as ``label``). They come from no suite or validation task, so they add nothing to
``train_splits_used``; a row sharing a sentence with STSBenchmark dev/test or any SICK file is
dropped, so STSBenchmark and SICK-R stay usable to compare recipes trained on them. They are
built only when named: ``sources=None`` means the four benchmark sources.

The other splits are read only to *exclude*: a train row whose text also appears in an
evaluation split of the same benchmark is dropped (STSBenchmark: dev/test sentences;
SciFact: dev claims and test queries; Banking77: test texts; SICK: the exact pair, since
SICK reuses its sentences across splits). Banking77 has no dev split, so ``banking_dev``
carves a fixed one from train (8 texts per intent, the same for every seed), and the
``banking`` pairs never use those texts: recipes are compared on it. MTEB's SICK-R scores all 9,927 SICK pairs,
train included, so a model trained with ``sick`` is not zero-shot on SICK-R;
``train_splits_used`` lists it for that reason. Every draw is seeded: the same
``seed`` gives the same file.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import json
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

from ..atomic import atomic_file
from ..errors import GEMError

REQUIRED_KEYS: tuple[str, ...] = ("anchor", "positive")
OPTIONAL_KEYS: tuple[str, ...] = ("negative", "source", "label")
PAIR_KEYS: tuple[str, ...] = REQUIRED_KEYS + OPTIONAL_KEYS

BENCHMARK_SOURCES: tuple[str, ...] = ("sts", "sick", "scifact", "banking")  # the default (sources=None)
GENERAL_SOURCES: tuple[str, ...] = ("snli", "mrpc", "coco")  # <data>/train/<name>/pairs.jsonl
SOURCES: tuple[str, ...] = BENCHMARK_SOURCES + GENERAL_SOURCES
SOURCE_NAMES = {
    "sts": "STSBenchmark train",
    "sick": "SICK-R train",
    "scifact": "SciFact train",
    "banking": "Banking77 train",
    "snli": "SNLI 1.0 dev+test+1% train",
    "mrpc": "MRPC train",
    "coco": "COCO 2017 val captions",
}
# MTEB tasks whose train split a pair's ``source`` comes from (train_summary.json's train_splits_used).
TRAIN_SPLIT_TASKS: dict[str, tuple[str, ...]] = {
    "STSBenchmark train": ("STSBenchmark",),
    "SICK-R train": ("SICK-R",),
    "SciFact train": ("SciFact",),
    "Banking77 train": ("Banking77Classification", "Banking77Clustering"),
}
STS_MIN_SCORE = 4.0
BANKING_PAIRS_PER_LABEL = 16  # the rarest Banking77 intent has 35 train texts: 27 after the dev draw, 13 pairs
BANKING_DEV_PER_LABEL = 8
DOCUMENT_CHARS = 1000


# ---------------------------------------------------------------------------- reading
def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """Every pair of a JSONL pairs file, each line checked before any is returned."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise GEMError(f"pairs file {path} {what}; give a .jsonl file of {{\"anchor\", \"positive\"}} lines "
                       "(gem pairs writes one)")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    pairs = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GEMError(f"{path} line {number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                           "convert the file to UTF-8") from None
        if line.strip():
            pairs.append(parse_pair(line, f"{path} line {number}"))
    if not pairs:
        raise GEMError(f"{path} holds no pairs; every line needs \"anchor\" and \"positive\"")
    return pairs


def parse_pair(line: str, where: str) -> dict[str, str]:
    """One JSONL line as a pair; errors start with ``where`` (file and line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise GEMError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
                       "each line must be one JSON object") from None
    if not isinstance(record, dict):
        raise GEMError(f"{where}: a JSON {_json_type(record)}, not an object; "
                       "each line must be {\"anchor\": ..., \"positive\": ...}")
    for key in record:
        if key not in PAIR_KEYS:
            close = difflib.get_close_matches(key, PAIR_KEYS, n=1)
            hint = f"did you mean \"{close[0]}\"? " if close else ""
            raise GEMError(f"{where}: unknown key \"{key}\"; {hint}the keys are {', '.join(PAIR_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in record or record[key] is None:
            raise GEMError(f"{where}: \"{key}\" is missing; every line needs \"anchor\" and \"positive\"")
    pair = {}
    for key in PAIR_KEYS:
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise GEMError(f"{where}: \"{key}\" must be a string, got a JSON {_json_type(value)}")
        if key in ("anchor", "positive", "negative") and not value.strip():
            fix = "drop the key" if key == "negative" else "give a text or drop the line"
            raise GEMError(f"{where}: \"{key}\" is empty; {fix}")
        pair[key] = value
    return pair


def _json_type(value) -> str:
    for kind, name in ((bool, "boolean"), ((int, float), "number"), (list, "list"), (str, "string"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"


def require_pairs_location(location: str | Path) -> Path:
    """``location`` as a path, refused in one line when nothing is there (checked before any model loads)."""
    location = Path(location)
    if not location.exists():
        raise GEMError(f"pairs_data {location} does not exist; give a pairs .jsonl file (gem pairs writes one) "
                       "or the shared data folder to build pairs from")
    return location


def load_pairs(location: str | Path, seed: int = 0, sources: str | Sequence[str] | None = None) -> list[dict[str, str]]:
    """A pairs file (``read_pairs``), or a shared data folder to build pairs from (``build_pairs``
    with ``sources``, default all; a file is read whole, so ``sources`` must then be None)."""
    location = require_pairs_location(location)
    if location.is_dir():
        return build_pairs(location, sources=sources, seed=seed)
    if sources is not None:
        raise GEMError(f"pairs_sources applies to a data folder, not to the pairs file {location}; "
                       "write the file with `gem pairs --sources ...` instead")
    return read_pairs(location)


def write_pairs(pairs: Iterable[dict[str, str]], out: str | Path) -> int:
    """Write pairs as JSONL through a temporary file renamed into place; return the count."""
    count = 0
    with atomic_file(out) as handle:
        for pair in pairs:
            handle.write(json.dumps({k: pair[k] for k in PAIR_KEYS if k in pair}, ensure_ascii=False) + "\n")
            count += 1
    return count


def train_splits_used(pairs: Iterable[dict[str, str]]) -> list[str]:
    """MTEB task names whose train split fed these pairs (from their ``source``), sorted."""
    tasks = {task for pair in pairs for task in TRAIN_SPLIT_TASKS.get(pair.get("source", ""), ())}
    return sorted(tasks)


def count_by_source(pairs: Iterable[dict[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for pair in pairs:
        counts[pair.get("source", "(no source)")] += 1
    return dict(counts)


# ---------------------------------------------------------------------------- building
def parse_sources(sources: str | Sequence[str] | None) -> list[str]:
    """``"sts,sick"`` or ``["sts", "sick"]`` -> checked source names in the given order
    (None: the four benchmark sources, ``BENCHMARK_SOURCES``)."""
    if sources is None:
        return list(BENCHMARK_SOURCES)
    names = [s.strip() for s in (sources.split(",") if isinstance(sources, str) else sources) if s.strip()]
    if not names:
        raise GEMError(f"no pair sources given; choose from {','.join(SOURCES)}")
    for name in names:
        if name not in SOURCES:
            raise GEMError(f"unknown pair source {name!r}; choose from {','.join(SOURCES)}")
    return list(dict.fromkeys(names))


def build_pairs(
    data_dir: str | Path,
    sources: str | Sequence[str] | None = None,
    seed: int = 0,
    max_per_source: int | None = None,
    decontaminate: bool = True,
) -> list[dict[str, str]]:
    """Pairs from the train splits under ``data_dir`` (see the module docstring), seeded.

    ``max_per_source`` keeps at most that many pairs of each source (a seeded sample;
    Banking77 stays balanced over its intents). ``decontaminate`` drops train rows whose
    text appears in an evaluation split of the same benchmark.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise GEMError(f"data folder {data_dir} does not exist; give the shared data folder (holding sts/, "
                       "retrieval/, classification/)")
    if max_per_source is not None and max_per_source < 1:
        raise GEMError(f"max_per_source must be >= 1, got {max_per_source}")
    builders = {"sts": _sts, "sick": _sick, "scifact": _scifact, "banking": _banking,
                **{name: partial(_general, name) for name in GENERAL_SOURCES}}
    pairs: list[dict[str, str]] = []
    for name in parse_sources(sources):
        rng = random.Random(f"gem-pairs/{seed}/{name}")
        built = builders[name](data_dir, rng, decontaminate)
        if name != "banking":  # banking comes interleaved by intent, so a cut stays balanced
            rng.shuffle(built)
        pairs.extend(built[:max_per_source])
    return pairs


def _file(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise GEMError(f"{path} not found; --data-dir must be the shared data folder (with {relative})")
    return path


def _rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _sts(data_dir: Path, rng: random.Random, decontaminate: bool) -> list[dict[str, str]]:
    rows = _rows(_file(data_dir, "sts/stsbenchmark/sts-train.csv"))
    held_out: set[str] = set()
    if decontaminate:
        for split in ("dev", "test"):
            for row in _rows(_file(data_dir, f"sts/stsbenchmark/sts-{split}.csv")):
                held_out.update((_norm(row["sentence1"]), _norm(row["sentence2"])))
    return [
        {"anchor": r["sentence1"], "positive": r["sentence2"], "source": SOURCE_NAMES["sts"]}
        for r in rows
        if float(r["score"]) >= STS_MIN_SCORE and not {_norm(r["sentence1"]), _norm(r["sentence2"])} & held_out
    ]


def _sick(data_dir: Path, rng: random.Random, decontaminate: bool) -> list[dict[str, str]]:
    rows = _rows(_file(data_dir, "sts/sickr/SICK_train.txt"), delimiter="\t")
    held_out: set[tuple[str, str]] = set()
    if decontaminate:
        for name in ("SICK_trial.txt", "SICK_test_annotated.txt"):
            held_out.update((_norm(r["sentence_A"]), _norm(r["sentence_B"]))
                            for r in _rows(_file(data_dir, f"sts/sickr/{name}"), delimiter="\t"))
    contradictions: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["entailment_judgment"] == "CONTRADICTION":
            contradictions[row["sentence_A"]].append(row["sentence_B"])
    pairs = []
    for row in rows:
        anchor, positive = row["sentence_A"], row["sentence_B"]
        if row["entailment_judgment"] != "ENTAILMENT" or (_norm(anchor), _norm(positive)) in held_out:
            continue
        pair = {"anchor": anchor, "positive": positive, "source": SOURCE_NAMES["sick"]}
        if contradictions.get(anchor):
            pair["negative"] = rng.choice(contradictions[anchor])
        pairs.append(pair)
    return pairs


def _scifact(data_dir: Path, rng: random.Random, decontaminate: bool) -> list[dict[str, str]]:
    claims = _rows(_file(data_dir, "retrieval/scifact/claims_train.csv"))
    documents = {}
    with _file(data_dir, "retrieval/scifact/corpus.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                documents[str(record["_id"])] = f"{record.get('title', '').strip()} {record.get('text', '').strip()}"
    held_out: set[str] = set()
    if decontaminate:
        held_out.update(_norm(r["claim"]) for r in _rows(_file(data_dir, "retrieval/scifact/claims_dev.csv")))
        with _file(data_dir, "retrieval/scifact/queries_test.jsonl").open(encoding="utf-8") as handle:
            held_out.update(_norm(json.loads(line)["text"]) for line in handle if line.strip())
    pairs, seen = [], set()
    for row in claims:
        claim = row["claim"].strip()
        if _norm(claim) in held_out:
            continue
        for doc_id in re.findall(r"\d+", row.get("cited_doc_ids") or ""):  # "[123 456]" (a numpy repr)
            if (claim, doc_id) in seen or doc_id not in documents:
                continue
            seen.add((claim, doc_id))
            pairs.append({"anchor": claim, "positive": cut_text(documents[doc_id]), "source": SOURCE_NAMES["scifact"]})
    return pairs


def _general(name: str, data_dir: Path, rng: random.Random, decontaminate: bool) -> list[dict[str, str]]:
    """``<data>/train/<name>/pairs.jsonl`` (checked line by line), its ``source`` the descriptive name;
    with ``decontaminate``, no row sharing a sentence with STSBenchmark dev/test or any SICK file."""
    pairs = read_pairs(_file(data_dir, f"train/{name}/pairs.jsonl"))
    held_out = _sts_and_sick_eval_texts(data_dir) if decontaminate else set()
    kept = []
    for pair in pairs:
        if held_out and any(_norm(pair[key]) in held_out for key in ("anchor", "positive", "negative") if key in pair):
            continue
        kept.append({**pair, "source": SOURCE_NAMES[name]})
    return kept


def _sts_and_sick_eval_texts(data_dir: Path) -> set[str]:
    """Normalised sentences STSBenchmark (dev, test) and SICK-R (all 9,927 pairs, as MTEB scores it) evaluate on."""
    texts: set[str] = set()
    for split in ("dev", "test"):
        for row in _rows(_file(data_dir, f"sts/stsbenchmark/sts-{split}.csv")):
            texts.update((_norm(row["sentence1"]), _norm(row["sentence2"])))
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        for row in _rows(_file(data_dir, f"sts/sickr/{name}"), delimiter="\t"):
            texts.update((_norm(row["sentence_A"]), _norm(row["sentence_B"])))
    return texts


def cut_text(text: str, limit: int = DOCUMENT_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters: at a sentence end past half of it, else at a space."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", head)]
    if ends and ends[-1] >= limit // 2:
        return head[: ends[-1]]
    return head.rsplit(" ", 1)[0] if " " in head else head


def banking_dev(data_dir: str | Path) -> list[tuple[str, str]]:
    """Banking77's dev split, carved from train: ``(text, intent)``, 8 per intent, intent by intent.

    The draw is fixed (not the pairs' seed), so every recipe is scored on the same texts,
    and the ``banking`` pairs leave them out. Texts that also appear in the test split are
    never drawn.
    """
    by_label = _banking_train(Path(data_dir))
    rng = random.Random("gem-pairs/banking-dev")
    dev: list[tuple[str, str]] = []
    for label in sorted(by_label):
        dev.extend((text, label) for text in rng.sample(by_label[label], BANKING_DEV_PER_LABEL))
    return dev


def _banking_train(data_dir: Path, decontaminate: bool = True) -> dict[str, list[str]]:
    """Banking77 train texts by intent, in file order (``decontaminate``: none of the test split's)."""
    held_out: set[str] = set()
    if decontaminate:
        held_out = {_norm(r["text"]) for r in _rows(_file(data_dir, "classification/banking77/test.csv"))}
    by_label: dict[str, list[str]] = defaultdict(list)
    for row in _rows(_file(data_dir, "classification/banking77/train.csv")):
        if _norm(row["text"]) not in held_out:
            by_label[row["category"]].append(row["text"])
    return by_label


def _banking(data_dir: Path, rng: random.Random, decontaminate: bool) -> list[dict[str, str]]:
    by_label = _banking_train(data_dir, decontaminate)
    dev = {text for text, _label in banking_dev(data_dir)}
    by_label = {label: [t for t in texts if t not in dev] for label, texts in by_label.items()}
    labels = sorted(by_label)
    rng.shuffle(labels)
    rounds: list[list[dict[str, str]]] = []
    for label in labels:
        texts = list(by_label[label])
        rng.shuffle(texts)
        for turn, start in enumerate(range(0, min(len(texts) - 1, 2 * BANKING_PAIRS_PER_LABEL), 2)):
            if turn == len(rounds):
                rounds.append([])
            rounds[turn].append({"anchor": texts[start], "positive": texts[start + 1],
                                 "source": SOURCE_NAMES["banking"], "label": label})
    return [pair for turn in rounds for pair in turn]  # round by round: any cut keeps the intents balanced
