"""Training text: reading corpora, cutting them into token chunks, holding out an eval slice.

Sources (``read_texts``): a ``.txt`` file (paragraphs separated by blank lines), a
``.jsonl`` file (a ``text`` field), a folder saved by ``datasets.save_to_disk`` (a ``text``
column), an NLTK corpus ``.zip`` (the Brown corpus's ``word/TAG`` tokens are untagged), or
a folder holding any of these. Nothing here loads a model; errors about the corpus come
before any model is loaded.
"""

from __future__ import annotations

import json
import random
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import GEMError

CHUNK_UNITS: tuple[str, ...] = ("sentence", "paragraph")

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_TAGGED_TOKEN = re.compile(r"^\S+/[a-z$*+\-.,:'`()]+$", re.IGNORECASE)
_SPACE_BEFORE = re.compile(r"\s+([,.;:!?%)\]}]|'s\b|n't\b|'re\b|'ll\b|'ve\b|'d\b|'m\b)")


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """All documents under ``path`` as plain strings (see the module docstring for formats)."""
    path = Path(path)
    if not path.exists():
        raise GEMError(f"training data {path} does not exist; pass --data with a .txt, .jsonl, .zip or folder")
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return _read_saved_dataset(path, field)
        texts: list[str] = []
        for child in sorted(path.rglob("*")):
            if child.is_file() and child.suffix in (".txt", ".jsonl", ".zip"):
                texts.extend(read_texts(child, field))
        return texts
    if path.suffix == ".jsonl":
        return read_jsonl(path, field)
    if path.suffix == ".zip":
        return _read_corpus_zip(path)
    return _paragraphs(path.read_text(encoding="utf-8", errors="replace"))


def split_sentences(text: str) -> list[str]:
    """A rule-based sentence splitter (good enough for chunking; no model download)."""
    text = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def make_chunks(
    texts: Iterable[str],
    tokenizer,
    unit: str = "sentence",
    min_tokens: int = 8,
    max_tokens: int = 64,
    limit: int | None = None,
) -> list[list[int]]:
    """Token-id chunks: one sentence each, or consecutive sentences packed up to ``max_tokens``.

    Chunks shorter than ``min_tokens`` are dropped; longer sentences are cut at ``max_tokens``.
    With ``limit``, stops once that many chunks exist (tokenising a whole corpus to train
    on a slice of it costs minutes on a small CPU).
    """
    if unit not in CHUNK_UNITS:
        raise GEMError(f"chunk unit {unit!r} is not one of {CHUNK_UNITS}")
    chunks: list[list[int]] = []
    for text in texts:
        if limit is not None and len(chunks) >= limit:
            return chunks[:limit]
        sentences = split_sentences(text)
        if not sentences:
            continue
        if unit == "sentence":
            encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
            chunks.extend(ids[:max_tokens] for ids in encoded if len(ids) >= min_tokens)
            continue
        # Sentences after the first keep the space that separated them in the text.
        spaced = sentences[:1] + [" " + s for s in sentences[1:]]
        encoded = tokenizer(spaced, add_special_tokens=False)["input_ids"]
        current: list[int] = []
        for ids in encoded:
            if current and len(current) + len(ids) > max_tokens:
                if len(current) >= min_tokens:
                    chunks.append(current)
                current = []
            current = (current + ids)[:max_tokens]
        if len(current) >= min_tokens:
            chunks.append(current)
    return chunks if limit is None else chunks[:limit]


def train_eval_split(
    chunks: list[list[int]], eval_size: int, seed: int, max_train: int | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """A seeded shuffle, then ``eval_size`` chunks held out and at most ``max_train`` kept."""
    order = list(range(len(chunks)))
    random.Random(seed).shuffle(order)
    held_out = [chunks[i] for i in order[:eval_size]]
    train = [chunks[i] for i in order[eval_size:]]
    if max_train is not None:
        train = train[:max_train]
    return train, held_out


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_jsonl(path: Path, field: str = "text") -> list[str]:
    """The string ``field`` of every non-blank line of a JSONL file."""
    with path.open(encoding="utf-8") as handle:
        return jsonl_texts(handle, str(path), field)


def jsonl_texts(lines: Iterable[str], source: str, field: str = "text") -> list[str]:
    """The string ``field`` of every non-blank JSON line; errors name ``source`` and the line number."""
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GEMError(f"{source}:{number} is not valid JSON ({exc.msg})") from None
        value = record.get(field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise GEMError(f"{source}:{number} has no string field {field!r}; name the text field (--field, data_field)")
        texts.append(value)
    return texts


def _read_saved_dataset(path: Path, field: str) -> list[str]:
    from datasets import load_from_disk

    dataset = load_from_disk(str(path))
    if hasattr(dataset, "keys"):  # a DatasetDict: take its train split only
        if "train" not in dataset:
            raise GEMError(f"{path} has splits {list(dataset.keys())} but no 'train'; save the train split alone")
        dataset = dataset["train"]
    if field not in dataset.column_names:
        raise GEMError(f"{path} has columns {dataset.column_names}, no {field!r}")
    return [t for t in dataset[field] if isinstance(t, str)]


def _read_corpus_zip(path: Path) -> list[str]:
    texts = []
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            base = name.rsplit("/", 1)[-1]
            if name.endswith("/") or base.upper().startswith(("README", "CONTENTS")) or base.endswith(".txt") is False and "." in base:
                continue
            raw = archive.read(name).decode("utf-8", errors="replace")
            texts.extend(_untag(p) for p in _paragraphs(raw))
    return [t for t in texts if t]


def _untag(paragraph: str) -> str:
    """Brown corpus ``The/at jury/nn`` -> ``The jury``; untagged text passes unchanged."""
    tokens = paragraph.split()
    if not tokens or sum(bool(_TAGGED_TOKEN.match(t)) for t in tokens) < 0.8 * len(tokens):
        return paragraph
    words = [t.rsplit("/", 1)[0] for t in tokens]
    text = " ".join(words).replace("``", '"').replace("''", '"')
    return _SPACE_BEFORE.sub(r"\1", text)
