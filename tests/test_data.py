"""Reading and chunking training text."""

from __future__ import annotations

import json
import zipfile

import pytest

from gem_adapter import GEMError
from gem_adapter.training.data import make_chunks, read_texts, split_sentences, train_eval_split

from conftest import make_tokenizer


def test_txt_paragraphs_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("First paragraph.\nStill first.\n\nSecond one.\n")
    assert read_texts(txt) == ["First paragraph.\nStill first.", "Second one."]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"text": "x"}) + "\n\n" + json.dumps({"body": "y"}) + "\n")
    with pytest.raises(GEMError, match="b.jsonl:3 has no string field 'text'"):
        read_texts(jsonl)
    jsonl.write_text(json.dumps({"text": "x"}) + "\n")
    assert read_texts(jsonl) == ["x"]


def test_nltk_zip_is_untagged(tmp_path):
    archive = tmp_path / "brown.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("brown/README", "not text to train on")
        handle.writestr("brown/ca01", "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, it/pps wasn't/bedz* ./.\n")
        handle.writestr("plain/story.txt", "Plain text stays.\n")
    texts = read_texts(archive)
    assert texts == ['The jury said " no ", it wasn\'t.', "Plain text stays."]


def test_saved_dataset_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"text": ["a b", "c"]})}).save_to_disk(str(tmp_path / "ds"))
    assert read_texts(tmp_path / "ds") == ["a b", "c"]


def test_folder_reads_everything_below(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "one.txt").write_text("One.")
    (tmp_path / "two.jsonl").write_text('{"text": "Two."}\n')
    assert sorted(read_texts(tmp_path)) == ["One.", "Two."]


def test_missing_path_is_named(tmp_path):
    with pytest.raises(GEMError, match="nope.txt does not exist"):
        read_texts(tmp_path / "nope.txt")


def test_sentence_splitting():
    assert split_sentences('He left. "Why?" she asked! Then 3 more came.\nDone') == [
        "He left.", '"Why?" she asked!', "Then 3 more came.", "Done"]


def test_chunks_by_sentence_and_paragraph():
    tokenizer = make_tokenizer()  # one token per byte
    text = "Aaaa bbbb cccc. Dd. Eeee ffff gggg hhhh."
    by_sentence = make_chunks([text], tokenizer, "sentence", min_tokens=5, max_tokens=12)
    assert [tokenizer.decode(c) for c in by_sentence] == ["Aaaa bbbb cc", "Eeee ffff gg"]
    by_paragraph = make_chunks([text], tokenizer, "paragraph", min_tokens=5, max_tokens=30)
    assert [tokenizer.decode(c) for c in by_paragraph] == ["Aaaa bbbb cccc. Dd.", " Eeee ffff gggg hhhh."]
    assert len(make_chunks([text] * 10, tokenizer, "sentence", 5, 12, limit=3)) == 3


def test_split_is_seeded_and_disjoint():
    chunks = [[i] for i in range(50)]
    train, held = train_eval_split(chunks, 10, seed=1, max_train=30)
    assert len(train) == 30 and len(held) == 10 and not {c[0] for c in train} & {c[0] for c in held}
    assert train_eval_split(chunks, 10, seed=1, max_train=30) == (train, held)
    assert train_eval_split(chunks, 10, seed=2)[1] != held
