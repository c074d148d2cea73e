"""Supervised pairs: the JSONL format and its reader, the train-split builder, the pair views, training with them."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED_DATA, save_tiny_base, tiny_training_config

from gem_adapter import GEMConfigError, GEMError
from gem_adapter.cli import main
from gem_adapter.masking import Segment
from gem_adapter.training.collator import GEMCollator
from gem_adapter.training.pairs import (
    BANKING_DEV_PER_LABEL,
    BANKING_PAIRS_PER_LABEL,
    banking_dev,
    build_pairs,
    count_by_source,
    cut_text,
    read_pairs,
    train_splits_used,
    write_pairs,
)

P, G, _ = Segment.PREFIX, Segment.GEM, Segment.PAD


# ---------------------------------------------------------------------------- the reader
def write_lines(tmp_path, *lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = '{"anchor": "a cat", "positive": "a kitten"}'


def test_reader_keeps_every_field_and_skips_blank_lines(tmp_path):
    path = write_lines(tmp_path, GOOD, "", '{"anchor": "x", "positive": "y", "negative": "z", "source": "S", "label": "L"}')
    assert read_pairs(path) == [
        {"anchor": "a cat", "positive": "a kitten"},
        {"anchor": "x", "positive": "y", "negative": "z", "source": "S", "label": "L"},
    ]


@pytest.mark.parametrize("line, message", [
    ('{"anchor": "a"}', 'line 3: "positive" is missing; every line needs "anchor" and "positive"'),
    ('{"positive": "a"}', 'line 3: "anchor" is missing; every line needs "anchor" and "positive"'),
    ('{"anchor": "a", "positive": null}', 'line 3: "positive" is missing'),
    ('{"anchor": "a", "positive": 5}', 'line 3: "positive" must be a string, got a JSON number'),
    ('{"anchor": "  ", "positive": "b"}', 'line 3: "anchor" is empty; give a text or drop the line'),
    ('{"anchor": "a", "positive": "b", "negative": ""}', 'line 3: "negative" is empty; drop the key'),
    ('{"anchor": "a", "postive": "b"}', 'line 3: unknown key "postive"; did you mean "positive"?'),
    ('{"anchor": "a", "positive": "b", "source": ["x"]}', 'line 3: "source" must be a string, got a JSON list'),
    ('["a", "b"]', "line 3: a JSON list, not an object"),
    ('{"anchor": "a", "positive": "b"', "line 3: not valid JSON"),
])
def test_each_bad_line_is_refused_with_its_line_and_fix(tmp_path, line, message):
    path = write_lines(tmp_path, GOOD, GOOD, line, GOOD)
    with pytest.raises(GEMError) as error:
        read_pairs(path)
    assert str(error.value).startswith(f"{path} {message}")
    assert "\n" not in str(error.value)


def test_bad_bytes_empty_files_and_folders_are_refused(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + '{"anchor": "caf\xe9", "positive": "b"}\n'.encode("latin-1"))
    with pytest.raises(GEMError, match=r"latin1.jsonl line 2: not valid UTF-8 \(byte 0xe9\)"):
        read_pairs(path)
    with pytest.raises(GEMError, match="holds no pairs"):
        read_pairs(write_lines(tmp_path, "", "  ", name="empty.jsonl"))
    with pytest.raises(GEMError, match="is a folder"):
        read_pairs(tmp_path)
    with pytest.raises(GEMError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")


def test_written_pairs_read_back_identically(tmp_path):
    pairs = [{"anchor": "é \"quoted\"", "positive": "b", "source": "STSBenchmark train"},
             {"anchor": "c", "positive": "d", "negative": "e"}]
    assert write_pairs(pairs, tmp_path / "sub" / "out.jsonl") == 2
    assert read_pairs(tmp_path / "sub" / "out.jsonl") == pairs
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.jsonl"]  # no temporary file left


def test_train_splits_used_names_mteb_tasks_from_sources():
    pairs = [{"source": "SICK-R train"}, {"source": "Banking77 train"}, {"source": "STSBenchmark train"},
             {"source": "SciFact train"}, {"source": "my own data"}, {}]
    assert train_splits_used(pairs) == ["Banking77Classification", "Banking77Clustering", "SICK-R", "STSBenchmark", "SciFact"]
    assert train_splits_used([]) == []


def test_long_documents_are_cut_at_a_sentence_end():
    text = "First sentence here. " * 100
    cut = cut_text(text, 100)
    assert len(cut) <= 100 and cut.endswith("here.")
    assert cut_text("short text", 100) == "short text"
    assert cut_text("word " * 50, 23) == "word word word word"


# ---------------------------------------------------------------------------- the builder
def write_csv(path, header, rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def data_dir(tmp_path):
    """A miniature of the shared data folder; evaluation splits share one text each with train."""
    root = tmp_path / "data"
    sts = root / "sts" / "stsbenchmark"
    write_csv(sts / "sts-train.csv", ["sentence1", "sentence2", "score"], [
        ["A plane takes off.", "An airplane is taking off.", "5.0"],
        ["A man plays a flute.", "A man plays a big flute.", "3.8"],  # below 4.0
        ["A dog runs.", "A dog is running.", "4.0"],
        ["A TEST sentence.", "Its paraphrase.", "4.6"],  # its anchor is a dev sentence
    ])
    write_csv(sts / "sts-dev.csv", ["sentence1", "sentence2", "score"], [["A test   sentence.", "x", "1.0"]])
    write_csv(sts / "sts-test.csv", ["sentence1", "sentence2", "score"], [["y", "z", "2.0"]])
    sick = root / "sts" / "sickr"
    header = ["pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment"]
    write_csv(sick / "SICK_train.txt", header, [
        ["1", "A boy sings", "A child sings", "4.5", "ENTAILMENT"],
        ["2", "A boy sings", "No boy sings", "3.0", "CONTRADICTION"],
        ["3", "A girl reads", "A girl is reading", "4.8", "ENTAILMENT"],
        ["5", "A cat sleeps", "A dog barks", "1.2", "NEUTRAL"],
        ["8", "A man cooks", "A person cooks", "4.4", "ENTAILMENT"],  # also a test pair
    ], delimiter="\t")
    write_csv(sick / "SICK_trial.txt", header, [["4", "A girl reads", "Nobody reads", "2.0", "CONTRADICTION"]],
              delimiter="\t")
    write_csv(sick / "SICK_test_annotated.txt", header, [["9", "A man cooks", "A person cooks", "4.4", "ENTAILMENT"]],
              delimiter="\t")
    scifact = root / "retrieval" / "scifact"
    header = ["id", "claim", "evidence_doc_id", "evidence_label", "evidence_sentences", "cited_doc_ids"]
    write_csv(scifact / "claims_train.csv", header, [
        ["0", "Aspirin lowers fever.", "11", "SUPPORT", "[0]", "[11 12]"],
        ["0", "Aspirin lowers fever.", "12", "SUPPORT", "[1]", "[11 12]"],  # same claim again
        ["3", "A dev claim.", "", "", "[]", "[11]"],
        ["4", "A query of the test set.", "", "", "[]", "[12]"],
    ])
    write_csv(scifact / "claims_dev.csv", header, [["7", "A dev claim.", "", "", "[]", "[11]"]])
    (scifact / "queries_test.jsonl").write_text(json.dumps({"_id": "1", "text": "A query of the test set."}) + "\n")
    (scifact / "corpus.jsonl").write_text(
        json.dumps({"_id": "11", "title": "Fever.", "text": "Aspirin works. " * 200}) + "\n"
        + json.dumps({"_id": 12, "title": "Pain", "text": "Short abstract."}) + "\n"
    )
    banking = root / "classification" / "banking77"
    rows = [[f"{label} question {i}", label] for label in ("card_lost", "top_up") for i in range(40)]
    write_csv(banking / "train.csv", ["text", "category"], rows + [["A test question", "top_up"]])
    write_csv(banking / "test.csv", ["text", "category"], [["a test  question", "top_up"]])
    general = {
        "snli": [{"anchor": "A man rides a horse.", "positive": "A person is riding.", "negative": "A man sleeps.", "source": "snli"},
                 {"anchor": "A girl reads", "positive": "Someone reads.", "source": "snli"},  # a SICK sentence
                 {"anchor": "Kids play outside.", "positive": "Children are playing.", "source": "snli"}],
        "mrpc": [{"anchor": "Shares rose 5 percent.", "positive": "The stock gained 5 percent.", "source": "mrpc"},
                 {"anchor": "He resigned.", "positive": "a  TEST sentence.", "source": "mrpc"}],  # an STSB dev sentence
        "coco": [{"anchor": "A red bus on a street.", "positive": "A bus parked by the road.", "source": "coco", "label": "7"},
                 {"anchor": "A bus in the city.", "positive": "A double-decker bus.", "source": "coco", "label": "7"}],
    }
    for name, rows in general.items():
        (root / "train" / name).mkdir(parents=True)
        write_pairs(rows, root / "train" / name / "pairs.jsonl")
    return root


def test_builder_takes_train_rows_only_and_names_their_split(data_dir):
    pairs = build_pairs(data_dir, seed=0)
    by_source = {}
    for pair in pairs:
        by_source.setdefault(pair["source"], []).append(pair)
    sts = {(p["anchor"], p["positive"]) for p in by_source["STSBenchmark train"]}
    assert sts == {("A plane takes off.", "An airplane is taking off."), ("A dog runs.", "A dog is running.")}
    sick = sorted(by_source["SICK-R train"], key=lambda p: p["anchor"])
    assert sick == [
        {"anchor": "A boy sings", "positive": "A child sings", "negative": "No boy sings", "source": "SICK-R train"},
        {"anchor": "A girl reads", "positive": "A girl is reading", "source": "SICK-R train"},  # trial's negative unused
    ]
    scifact = sorted((p["anchor"], p["positive"][:20]) for p in by_source["SciFact train"])
    assert scifact == [("Aspirin lowers fever.", "Fever. Aspirin works"), ("Aspirin lowers fever.", "Pain Short abstract.")]
    assert all(len(p["positive"]) <= 1000 for p in by_source["SciFact train"])
    banking = by_source["Banking77 train"]
    assert {p["label"] for p in banking} == {"card_lost", "top_up"}
    assert len(banking) == 2 * BANKING_PAIRS_PER_LABEL
    assert all(p["anchor"].startswith(p["label"]) and p["positive"].startswith(p["label"]) for p in banking)
    texts = [t for p in banking for t in (p["anchor"], p["positive"])]
    assert len(texts) == len(set(texts))  # disjoint pairs
    assert "A test question" not in texts
    assert train_splits_used(pairs) == ["Banking77Classification", "Banking77Clustering", "SICK-R", "STSBenchmark", "SciFact"]


def test_general_sources_are_read_from_train_named_and_kept_off_the_sts_evaluation_text(data_dir):
    pairs = build_pairs(data_dir, sources="snli,mrpc,coco", seed=0)
    assert count_by_source(pairs) == {"SNLI 1.0 dev+test+1% train": 2, "MRPC train": 1, "COCO 2017 val captions": 2}
    assert train_splits_used(pairs) == []  # no suite or validation task trains on them
    anchors = {p["anchor"] for p in pairs}
    assert "A girl reads" not in anchors and "He resigned." not in anchors  # SICK sentence, STSB dev sentence
    snli = next(p for p in pairs if p["anchor"] == "A man rides a horse.")
    assert snli == {"anchor": "A man rides a horse.", "positive": "A person is riding.", "negative": "A man sleeps.",
                    "source": "SNLI 1.0 dev+test+1% train"}
    assert {p.get("label") for p in pairs if p["source"].startswith("COCO")} == {"7"}  # one image: never negatives
    kept_all = build_pairs(data_dir, sources="snli,mrpc", seed=0, decontaminate=False)
    assert count_by_source(kept_all) == {"SNLI 1.0 dev+test+1% train": 3, "MRPC train": 2}
    assert build_pairs(data_dir, seed=0) == build_pairs(data_dir, sources="sts,sick,scifact,banking", seed=0)  # named only


def test_a_missing_general_source_file_names_its_path(data_dir):
    (data_dir / "train" / "mrpc" / "pairs.jsonl").unlink()
    with pytest.raises(GEMError, match=r"train/mrpc/pairs.jsonl not found; --data-dir must be the shared data folder"):
        build_pairs(data_dir, sources="snli,mrpc")


def test_banking_dev_is_a_fixed_draw_from_train_that_no_pair_uses(data_dir):
    dev = banking_dev(data_dir)
    assert sorted({label for _text, label in dev}) == ["card_lost", "top_up"]
    assert [label for _text, label in dev].count("top_up") == BANKING_DEV_PER_LABEL
    assert "A test question" not in {text for text, _label in dev}  # the test split's text is never drawn
    assert banking_dev(data_dir) == dev  # not seeded by the pairs' seed: every recipe scores on it
    for seed in (0, 1):
        used = {t for p in build_pairs(data_dir, sources="banking", seed=seed) for t in (p["anchor"], p["positive"])}
        assert not used & {text for text, _label in dev}


def test_builder_is_deterministic_by_seed_and_caps_each_source(data_dir):
    first = build_pairs(data_dir, seed=0)
    assert build_pairs(data_dir, seed=0) == first
    assert build_pairs(data_dir, seed=1) != first
    capped = build_pairs(data_dir, sources="banking,sts", seed=0, max_per_source=5)
    assert count_by_source(capped) == {"Banking77 train": 5, "STSBenchmark train": 2}
    banking = build_pairs(data_dir, sources=["banking"], seed=3, max_per_source=6)
    assert sorted(p["label"] for p in banking) == ["card_lost"] * 3 + ["top_up"] * 3  # balanced over intents
    with pytest.raises(GEMError, match="unknown pair source 'stsb'; choose from sts,sick,scifact,banking,snli,mrpc,coco$"):
        build_pairs(data_dir, sources="stsb")
    with pytest.raises(GEMError, match="not found; --data-dir must be the shared data folder"):
        build_pairs(data_dir / "sts", sources="sts")


def test_pairs_data_is_a_file_or_a_data_folder_to_build_from(tmp_path, data_dir):
    from gem_adapter.training.pairs import load_pairs
    from gem_adapter.training.run import load_training_pairs

    assert load_pairs(data_dir, seed=2) == build_pairs(data_dir, seed=2)
    path = write_lines(tmp_path, GOOD, GOOD)
    assert load_pairs(path) == read_pairs(path)
    config = tiny_training_config("base", "data", "out", pairs_data=str(data_dir), seed=2)
    assert load_training_pairs(config) == build_pairs(data_dir, seed=2)
    assert load_training_pairs(tiny_training_config("base", "data", "out", pairs_data=str(path), pairs_weight=0.0)) == []
    assert load_training_pairs(tiny_training_config("base", "data", "out")) == []


SHARED_TRAIN_ROWS = {"STSBenchmark train": 1268, "SICK-R train": 1276, "SciFact train": 914, "Banking77 train": 1229}  # 3 rare intents: 13-15 pairs after the dev draw


SHARED_GENERAL_ROWS = {"SNLI 1.0 dev+test+1% train": 8324, "MRPC train": 2174, "COCO 2017 val captions": 10012}  # README: 8,352 / 2,174 / 10,013 before 28 + 1 rows that share a sentence with STSB dev/test or SICK


@pytest.mark.skipif(not (SHARED_DATA / "train" / "snli").is_dir(), reason="the shared general-domain pairs are not here")
def test_general_sources_on_the_shared_data():
    pairs = build_pairs(SHARED_DATA, sources=["snli", "mrpc", "coco"], seed=0)
    assert count_by_source(pairs) == SHARED_GENERAL_ROWS
    assert train_splits_used(pairs) == []
    assert sum("negative" in p for p in pairs) == 6233  # SNLI contradictions
    assert len({p["label"] for p in pairs if "label" in p}) == 5000  # COCO image ids


@pytest.mark.skipif(not (SHARED_DATA / "sts").is_dir(), reason="the shared benchmark data is not here")
def test_builder_on_the_shared_data_uses_no_evaluation_text():
    pairs = build_pairs(SHARED_DATA, seed=0)
    assert count_by_source(pairs) == SHARED_TRAIN_ROWS
    def norm(text):
        return " ".join(text.split()).casefold()

    texts = {norm(t) for p in pairs for t in (p["anchor"], p["positive"], p.get("negative", ""))}
    sts = SHARED_DATA / "sts" / "stsbenchmark"
    for split in ("sts-dev.csv", "sts-test.csv"):
        with (sts / split).open(encoding="utf-8") as handle:
            held_out = {norm(r[k]) for r in csv.DictReader(handle) for k in ("sentence1", "sentence2")}
        assert not held_out & {norm(t) for p in pairs if p["source"] == "STSBenchmark train" for t in (p["anchor"], p["positive"])}
    with (SHARED_DATA / "classification" / "banking77" / "test.csv").open(encoding="utf-8") as handle:
        assert not {norm(r["text"]) for r in csv.DictReader(handle)} & texts
    with (SHARED_DATA / "sts" / "sickr" / "SICK_train.txt").open(encoding="utf-8") as handle:
        train_pairs = {(r["sentence_A"], r["sentence_B"]) for r in csv.DictReader(handle, delimiter="\t")}
    assert all((p["anchor"], p["positive"]) in train_pairs for p in pairs if p["source"] == "SICK-R train")
    with (SHARED_DATA / "retrieval" / "scifact" / "queries_test.jsonl").open(encoding="utf-8") as handle:
        queries = {norm(json.loads(line)["text"]) for line in handle if line.strip()}
    assert not queries & {norm(p["anchor"]) for p in pairs if p["source"] == "SciFact train"}


# ---------------------------------------------------------------------------- the pair views
GEM_ID, PAD_ID = 900, 0


def pair_collator(pairs, **kwargs):
    values = {"gem_token_ids": [GEM_ID], "pad_token_id": PAD_ID, "min_prefix_tokens": 2, "min_suffix_tokens": 2,
              "max_length": 12, "view_head_ids": [1, 2], "view_tail_ids": [3], "pairs": pairs, "pairs_per_batch": 3}
    values.update(kwargs)
    return GEMCollator(**values)


TOKEN_PAIRS = [
    {"anchor": [10, 11], "positive": [20, 21, 22], "negative": [30], "group": "anchor:a"},
    {"anchor": [12], "positive": [23, 24], "negative": None, "group": "label:x"},
    {"anchor": [13, 14, 15], "positive": [25] * 20, "negative": None, "group": "label:x"},  # cut to fit
]
CHUNKS = [{"input_ids": list(range(40, 52)), "index": i} for i in range(2)]


def test_pair_views_are_embedding_rows_with_the_template_and_gem_token():
    batch = pair_collator(TOKEN_PAIRS)(CHUNKS)
    anchors, positives = batch["pair_anchor_input_ids"], batch["pair_positive_input_ids"]
    assert anchors.shape[0] == positives.shape[0] == 3 and batch["pair_negative_input_ids"].shape[0] == 1
    drawn = []
    for row in range(3):
        seg = batch["pair_anchor_segment_ids"][row]
        real = anchors[row][seg != _].tolist()
        assert real[:2] == [1, 2] and real[-2:] == [3, GEM_ID]
        assert seg[seg != _].tolist() == [P] * (len(real) - 1) + [G]
        assert (anchors[row][seg == _] == PAD_ID).all()
        drawn.append(next(p for p in TOKEN_PAIRS if p["anchor"] == real[2:-2]))
        pos_seg = batch["pair_positive_segment_ids"][row]
        pos = positives[row][pos_seg != _].tolist()
        assert len(pos) <= 12 and pos[:2] == [1, 2] and pos[-2:] == [3, GEM_ID]  # the tail survives the cut
        assert pos[2:-2] == drawn[-1]["positive"][: 12 - 4]
    assert batch["pair_negative_input_ids"][0][batch["pair_negative_segment_ids"][0] != _].tolist() == [1, 2, 30, 3, GEM_ID]
    # the two label:x pairs are not each other's negatives; the hard negative counts for every row
    expected = torch.zeros(3, 4, dtype=torch.bool)
    x_rows = [r for r, p in enumerate(drawn) if p["group"] == "label:x"]
    expected[x_rows[0], x_rows[1]] = expected[x_rows[1], x_rows[0]] = True
    assert torch.equal(batch["pair_mask"], expected)


def test_a_repeated_positive_is_not_a_negative():
    pairs = [{"anchor": [10], "positive": [20], "group": "anchor:a"}, {"anchor": [11], "positive": [20], "group": "anchor:b"}]
    mask = pair_collator(pairs, pairs_per_batch=2)(CHUNKS)["pair_mask"]
    assert torch.equal(mask, torch.tensor([[False, True], [True, False]]))


def test_pair_draws_depend_on_seed_epoch_and_batch_indices_only():
    many = [{"anchor": [10 + i], "positive": [100 + i], "negative": None, "group": f"anchor:{i}"} for i in range(50)]
    def draw(collator, chunks):
        return collator(chunks)["pair_anchor_input_ids"]

    other = [{"input_ids": c["input_ids"], "index": c["index"] + 2} for c in CHUNKS]
    assert torch.equal(draw(pair_collator(many), CHUNKS), draw(pair_collator(many), CHUNKS))
    assert not torch.equal(draw(pair_collator(many), CHUNKS), draw(pair_collator(many), other))  # another rank's batch
    assert not torch.equal(draw(pair_collator(many), CHUNKS), draw(pair_collator(many, seed=1), CHUNKS))
    assert not torch.equal(draw(pair_collator(many), CHUNKS), draw(pair_collator(many, epoch=1), CHUNKS))
    rows = draw(pair_collator(many, pairs_per_batch=50), CHUNKS)[:, 2].tolist()
    assert sorted(rows) == list(range(10, 60))  # without replacement
    assert "pair_anchor_input_ids" not in pair_collator(many, pairs_per_batch=0)(CHUNKS)
    assert "pair_anchor_input_ids" not in pair_collator([])(CHUNKS)


# ---------------------------------------------------------------------------- training with pairs
def test_pairs_loss_is_infonce_over_positives_and_hard_negatives_without_masked_columns():
    from types import SimpleNamespace

    from gem_adapter.training.trainer import GEMTrainer

    torch.manual_seed(0)
    table = torch.nn.Embedding(1000, 8).requires_grad_(False)

    class Decoder:  # a causal stand-in: the state at position t sums the embedding rows of tokens 0..t
        def __call__(self, input_ids, **kwargs):
            return SimpleNamespace(last_hidden_state=table(input_ids).cumsum(dim=1))

    pairs = [{"anchor": [10 + i], "positive": [20 + i], "negative": [30 + i] if i == 0 else None,
              "group": "label:x" if i else "anchor:a"} for i in range(3)]
    batch = GEMCollator(gem_token_ids=[GEM_ID], pad_token_id=PAD_ID, max_length=16, pairs=pairs, pairs_per_batch=3)(CHUNKS)
    fake = SimpleNamespace(args=SimpleNamespace(contrastive_temperature=0.5, matryoshka_dims=None))
    fake._hidden_states = lambda *arguments: GEMTrainer._hidden_states(fake, *arguments)
    def side(name):
        return GEMTrainer._embed(fake, Decoder(), "sdpa", torch.float32, batch, name)

    loss = GEMTrainer._pairs_nce(fake, batch["pair_mask"], side("pair_anchor"), side("pair_positive"), side("pair_negative"))

    # each row is [text token, GEM]: its GEM state is row(text) + row(GEM)
    def embed(name):
        return torch.nn.functional.normalize(table(batch[f"pair_{name}_input_ids"][:, 0]) + table(torch.tensor(GEM_ID)), dim=-1)

    logits = embed("anchor") @ torch.cat([embed("positive"), embed("negative")]).T / 0.5
    assert logits.shape == (3, 4)  # 3 positives + the one hard negative
    x_rows = [r for r in range(3) if batch["pair_anchor_input_ids"][r, 0] != 10]
    logits[x_rows[0], x_rows[1]] = logits[x_rows[1], x_rows[0]] = float("-inf")  # one label: not negatives
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    assert torch.allclose(loss, expected, atol=1e-6)
    unmasked = torch.nn.functional.cross_entropy(
        embed("anchor") @ torch.cat([embed("positive"), embed("negative")]).T / 0.5, torch.arange(3))
    assert not torch.allclose(loss, unmasked)


STS_PAIRS = [
    {"anchor": f"Sentence {i} is about a {w}.", "positive": f"This sentence, {i}, talks of a {w}.",
     "source": "STSBenchmark train", **({"negative": f"Nothing about any {w}."} if i % 2 else {})}
    for i, w in enumerate(["dog", "cat", "boat", "tree", "house", "car"])
]


def test_training_with_pairs_logs_a_finite_pairs_loss_and_the_train_splits(tmp_path):
    base = save_tiny_base(tmp_path / "tiny")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i} is about the {w} near the river, with {i} words more." for i, w in
                                  enumerate(["dog", "cat", "boat", "tree"] * 8)))
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(STS_PAIRS, pairs)
    from gem_adapter.training.run import train

    config = tiny_training_config(base, corpus, tmp_path / "out", max_steps=2, pairs_data=str(pairs), pairs_per_batch=4,
                                  save_steps=10, min_chunk_tokens=8)
    out = train(config)
    logged = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    losses = [r["loss_pairs"] for r in logged if "loss_pairs" in r]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_splits_used"] == ["STSBenchmark"]
    assert summary["train_pairs"] == {"STSBenchmark train": 6}


def test_pairs_settings_are_validated():
    with pytest.raises(GEMConfigError, match="pairs_per_batch must be >= 2"):
        tiny_training_config("base", "data", "out", pairs_per_batch=1)
    with pytest.raises(GEMConfigError, match="pairs_weight must be >= 0"):
        tiny_training_config("base", "data", "out", pairs_weight=-1.0)


# ---------------------------------------------------------------------------- gem pairs
def test_cli_pairs_writes_the_file_once_and_refuses_to_overwrite(tmp_path, data_dir):
    out = tmp_path / "pairs.jsonl"
    args = ["pairs", "--data-dir", str(data_dir), "--out", str(out), "--sources", "sts,sick", "--seed", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"wrote 4 pairs to {out} (STSBenchmark train 2, SICK-R train 2)" in result.output
    assert read_pairs(out) == build_pairs(data_dir, sources="sts,sick", seed=0)
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists; pass --force to replace it" in again.output
    assert CliRunner().invoke(main, args + ["--force"]).exit_code == 0
    bad = CliRunner().invoke(main, args[:-4] + ["--sources", "sts,glue", "--force"])
    assert bad.exit_code == 1 and bad.output.strip().splitlines() == [
        "Error: unknown pair source 'glue'; choose from sts,sick,scifact,banking,snli,mrpc,coco"]
    general = CliRunner().invoke(main, args[:-4] + ["--sources", "coco,mrpc", "--force"])
    assert general.exit_code == 0, general.output
    assert general.output.strip() == (f"wrote 3 pairs to {out} (COCO 2017 val captions 2, MRPC train 1); "
                                      "train splits of: no suite task (general-domain sources only)")
    missing = CliRunner().invoke(main, ["pairs", "--out", str(out)])
    assert missing.exit_code == 2 and "Missing option '--data-dir'" in missing.output


def test_missing_pairs_data_is_named_as_missing(tmp_path):
    from gem_adapter.training.pairs import load_pairs

    for sources in (None, ["snli"]):  # with sources it used to be taken for a pairs file
        with pytest.raises(GEMError, match=rf"pairs_data {tmp_path / 'none'} does not exist"):
            load_pairs(tmp_path / "none", sources=sources)
