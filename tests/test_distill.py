"""Distillation from a teacher embedder: the batch's similarity matrix, taught by a fixed sentence embedder.

* ``similarity_distillation``: row-wise KL of softmax(S_t / tau_t) and softmax(S_s / tau_s) over each
  text's other texts (or the MSE of those cosines); zero exactly when the matrices agree.
* ``GEMTrainer``: ``loss_distill`` over the texts the step embeds (views, pairs), its gradient reaching
  the LoRA and the GEM rows, the same under GradCache; the teacher never enters the adapter.
* The unit tests use a tiny random sentence-transformers model as the teacher (hidden 16, the byte
  tokenizer); one test runs the packaged all-MiniLM-L6-v2.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import gradients_of, make_tokenizer, save_tiny_base, tiny_training_config, trainer_and_batch
from safetensors import safe_open

from gem_adapter import GEMConfig, GEMConfigError, GEMError, GEMModel
from gem_adapter.training.distill import (
    batch_distillation,
    distill_sides,
    load_teacher,
    similarity_distillation,
)
from gem_adapter.training.pairs import write_pairs

# these tests compare numbers to float32 tolerances (GradCache and gathering against one pass)
pytestmark = pytest.mark.usefixtures("auto_is_float32")


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A sentence-transformers folder: a random 1-layer BERT (hidden 16) on the byte tokenizer, mean pooling."""
    from transformers import BertConfig, BertModel

    from gem_adapter import quiet

    quiet.import_peft()
    from sentence_transformers import SentenceTransformer

    root = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=257, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=128, pad_token_id=256))
    bert.save_pretrained(root / "hf")
    make_tokenizer().save_pretrained(root / "hf")
    SentenceTransformer(str(root / "hf"), device="cpu").save(str(root / "st"))
    return root / "st"


def textbook_kl(student, teacher, student_temperature, teacher_temperature):
    """The loss written out row by row: KL(p_t || p_s) over the other texts of each row, averaged over rows."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    total = 0.0
    for i in range(len(s)):
        others = [j for j in range(len(s)) if j != i]
        p_t = torch.softmax(torch.stack([t[i] @ t[j] for j in others]) / teacher_temperature, dim=0)
        p_s = torch.softmax(torch.stack([s[i] @ s[j] for j in others]) / student_temperature, dim=0)
        total += float((p_t * (p_t.log() - p_s.log())).sum())
    return total / len(s)


# ---------------------------------------------------------------------------- the loss
def test_the_loss_is_the_row_wise_kl_over_each_texts_other_texts():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 12), torch.randn(6, 8)
    for tau_s, tau_t in ((0.05, 0.05), (0.1, 0.02)):
        loss = similarity_distillation(student, teacher, tau_s, tau_t)
        assert float(loss) == pytest.approx(textbook_kl(student, teacher, tau_s, tau_t), rel=1e-5)
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    off = ~torch.eye(6, dtype=torch.bool)
    expected = ((s @ s.T - t @ t.T)[off] ** 2).mean()
    torch.testing.assert_close(similarity_distillation(student, teacher, objective="mse"), expected)


@pytest.mark.parametrize("objective", ["kl", "mse"])
def test_the_loss_is_zero_when_the_similarity_matrices_agree_and_positive_otherwise(objective):
    torch.manual_seed(0)
    teacher = torch.randn(8, 6)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10))
    student = 3.0 * teacher @ rotation[:6]  # another width, scale and basis; the same cosines
    assert float(similarity_distillation(student, teacher, objective=objective)) == pytest.approx(0.0, abs=1e-6)
    assert float(similarity_distillation(torch.randn(8, 10), teacher, objective=objective)) > 1e-3
    # one text moved: only the matrix's disagreement counts
    moved = student.clone()
    moved[3] = torch.randn(10)
    assert float(similarity_distillation(moved, teacher, objective=objective)) > 1e-3
    assert float(similarity_distillation(student[:1], teacher[:1], objective=objective)) == 0.0  # no other text


def test_with_matryoshka_dims_the_prefixes_are_taught_too():
    torch.manual_seed(0)
    teacher = torch.randn(8, 6)
    rotation, _ = torch.linalg.qr(torch.randn(12, 12))
    student = teacher @ rotation[:6]  # the full vectors agree, their 4-value prefixes do not
    full, nested = similarity_distillation(student, teacher), similarity_distillation(student, teacher, dims=[4])
    assert float(full) == pytest.approx(0.0, abs=1e-6) and float(nested) > 1e-2
    cut = F.normalize(student[:, :4], dim=-1)
    expected = textbook_kl(cut, teacher, 0.05, 0.05) / 2  # the mean of the full size (0) and the prefix
    assert float(nested) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="matryoshka dimension 12 is not below the embedding size 12"):
        similarity_distillation(student, teacher, dims=[12])


def test_sides_enter_the_matrix_in_order_and_missing_sides_as_empty_rows():
    assert distill_sides("views", views_embedded_twice=False) == ("view_a",)
    assert distill_sides("views", views_embedded_twice=True) == ("view_a", "view_b")
    assert distill_sides("all", False) == ("view_a", "pair_anchor", "pair_positive", "pair_negative")
    assert distill_sides("pairs", True) == ("pair_anchor", "pair_positive", "pair_negative")
    torch.manual_seed(0)
    student, teacher = torch.randn(7, 12), torch.randn(7, 8)
    parts = batch_distillation([student[:3], student[3:], student[:0]], [teacher[:3], teacher[3:], teacher[:0]])
    torch.testing.assert_close(parts, similarity_distillation(student, teacher))


# ---------------------------------------------------------------------------- the teacher
def test_the_teacher_gives_fixed_unit_rows_without_a_graph(tiny_teacher):
    teacher = load_teacher(str(tiny_teacher))
    vectors = teacher.embed(["a dog runs", "the cat sat on the mat", "x"])
    assert vectors.shape == (3, 16) and vectors.dtype == torch.float32 and not vectors.requires_grad
    np.testing.assert_allclose(vectors.norm(dim=1).numpy(), 1.0, atol=1e-6)
    assert not vectors.is_inference()  # usable inside a loss that autograd saves
    assert not any(p.requires_grad for p in teacher.model.parameters())
    torch.testing.assert_close(teacher.embed(["x", "a dog runs"]), vectors[[2, 0]])  # row by row, in order
    assert teacher.embed([]).shape == (0, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the trainer's mixed precision does not reach the teacher
        torch.testing.assert_close(teacher.embed(["a dog runs"]), vectors[:1], atol=1e-6, rtol=1e-6)
    assert teacher.describe()["dimension"] == 16 and teacher.texts_embedded == 6


@pytest.mark.real_model
def test_the_packaged_minilm_is_the_default_teacher(tmp_path):
    from sentence_transformers import SentenceTransformer

    from gem_adapter.evaluation import minilm_path

    teacher = load_teacher()
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply."]
    vectors = teacher.embed(texts)
    assert vectors.shape == (3, 384)
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors.numpy(), reference, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3  # the paraphrase is far nearer than the unrelated text
    described = teacher.describe()
    assert described["name"] == "sentence-transformers/all-MiniLM-L6-v2" and described["package_version"]


# ---------------------------------------------------------------------------- the trainer term
def trainer_setup(tmp_path, corpus, teacher, with_pairs=True, **overrides):
    """A GEMTrainer on the tiny base with the teacher and (optionally) pairs, and one collated batch of 8 chunks."""
    values = {"distill_weight": 0.8, "distill_teacher": str(teacher), "lora_dropout": 0.0, "matryoshka_dims": [8],
              "per_device_train_batch_size": 8, "distill_texts": "all"}
    values.update(overrides)
    config = tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out", **values)
    return trainer_and_batch(config, with_pairs)


def test_the_batch_keeps_the_text_each_row_embeds(tmp_path, corpus, tiny_teacher):
    trainer, batch, gem = trainer_setup(tmp_path, corpus, tiny_teacher)
    assert "view_a_input_ids" in batch and "view_b_input_ids" in batch  # views drawn for the term alone
    for side in ("view_a", "pair_anchor", "pair_positive", "pair_negative"):
        ids, segments, texts = batch[f"{side}_input_ids"], batch[f"{side}_segment_ids"], batch[f"{side}_texts"]
        assert len(texts) == ids.shape[0] > 0
        for row, text in enumerate(texts):
            embedded = ids[row][(segments[row] == 1)].tolist()  # PREFIX: template (none here) and text
            assert text == gem.tokenizer.decode(embedded).strip() and text
    assert trainer.teacher is not None and trainer.teacher.device == torch.device("cpu")


def test_the_term_scores_each_rows_embedding_against_the_teacher_on_that_rows_text(tmp_path, corpus, tiny_teacher):
    trainer, batch, _gem = trainer_setup(tmp_path, corpus, tiny_teacher, contrastive_weight=0.5)
    names = [term[0] for term in trainer._embedding_terms(batch)]
    (_name, weight, sides, loss), = [term for term in trainer._embedding_terms(batch) if term[0] == "loss_distill"]
    assert names == ["loss_contrastive", "loss_pairs", "loss_distill"] and weight == 0.8
    assert sides == ("view_a", "view_b", "pair_anchor", "pair_positive", "pair_negative")  # both views: embedded anyway
    causal_lm = trainer._peft_model.get_base_model()
    with torch.no_grad():
        embedded = [trainer._embed(causal_lm.get_decoder(), causal_lm.config._attn_implementation, causal_lm.dtype,
                                   batch, side) for side in sides]
        texts = [text for side in sides for text in batch[f"{side}_texts"]]
        expected = similarity_distillation(torch.cat(embedded), trainer.teacher.embed(texts), dims=[8])
        torch.testing.assert_close(loss(*embedded), expected)


def test_pairs_are_loaded_for_their_texts_when_only_distillation_uses_them(tmp_path):
    from gem_adapter.training.run import load_training_pairs

    pairs = tmp_path / "pairs.jsonl"
    write_pairs([{"anchor": "a cat", "positive": "a kitten"}, {"anchor": "a dog", "positive": "a puppy"}], pairs)
    kept = {"pairs_data": str(pairs), "pairs_weight": 0.0}
    assert len(load_training_pairs(tiny_training_config("b", "d", "o", distill_weight=1.0, distill_texts="pairs", **kept))) == 2
    assert load_training_pairs(tiny_training_config("b", "d", "o", distill_weight=1.0, distill_texts="views", **kept)) == []
    assert load_training_pairs(tiny_training_config("b", "d", "o", **kept)) == []


def test_the_term_is_logged_and_its_gradient_reaches_the_lora_and_the_gem_rows(tmp_path, corpus, tiny_teacher):
    trainer, batch, _gem = trainer_setup(tmp_path, corpus, tiny_teacher, pairs_weight=0.0)
    _loss, with_term = gradients_of(trainer, batch)
    assert len(trainer._metrics["train"]["loss_distill"]) == 1 and trainer._metrics["train"]["loss_distill"][0] > 0
    assert "loss_pairs" not in trainer._metrics["train"]  # pairs_weight 0: only their texts are used
    trainer.args.distill_weight = 0.0
    _loss, without = gradients_of(trainer, batch)
    differing = {name for name in with_term if not torch.allclose(with_term[name], without[name], atol=1e-8)}
    assert any("lora_A" in n for n in differing) and any("lora_B" in n for n in differing)
    assert any("trainable_tokens" in n for n in differing)  # the GEM rows learn from the teacher too


@pytest.mark.parametrize("contrastive_weight", [0.0, 0.7])
def test_gradcache_gives_the_one_pass_gradients_with_the_term(tmp_path, corpus, tiny_teacher, contrastive_weight):
    trainer, batch, _gem = trainer_setup(tmp_path, corpus, tiny_teacher, contrastive_weight=contrastive_weight)
    loss, plain = gradients_of(trainer, batch)
    for chunk in (3, 8):
        cached_loss, cached = gradients_of(trainer, batch, chunk)
        torch.testing.assert_close(cached_loss, loss, atol=1e-5, rtol=1e-5)
        assert cached.keys() == plain.keys()
        for name in plain:
            torch.testing.assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
    logged = trainer._metrics["train"]["loss_distill"]
    assert len(logged) == 3 and np.allclose(logged, logged[0], rtol=1e-5)


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize("overrides, message", [
    ({"distill_weight": -1.0}, r"^distill_weight must be >= 0 \(0: no distillation\), got -1.0$"),
    ({"distill_texts": "chunks"}, r"^distill_texts must be one of \('all', 'views', 'pairs'\), got 'chunks'$"),
    ({"distill_objective": "cosine"}, r"^distill_objective must be one of \('kl', 'mse'\), got 'cosine'$"),
    ({"distill_temperature": 0.0}, r"^distill_temperature must be > 0, got 0.0$"),
    ({"distill_teacher_temperature": -0.1}, r"^distill_teacher_temperature must be > 0, got -0.1$"),
    ({"distill_teacher": " "}, r"^distill_teacher must be a sentence-transformers folder, a hub id or "),
    ({"distill_weight": 1.0, "distill_texts": "pairs"},
     r"^distill_texts must be 'views' or 'all' without pairs_data \(set pairs_data to distill on pairs\), got 'pairs'$"),
])
def test_bad_distillation_settings_are_refused_naming_the_field_and_the_fix(overrides, message):
    with pytest.raises(GEMConfigError, match=message):
        tiny_training_config("base", "data", "out", **overrides)


def test_distillation_is_off_by_default():
    config = tiny_training_config("base", "data", "out")
    assert config.distill_weight == 0.0 and config.gem_config().distilled_from is None
    assert config.distill_teacher == "sentence-transformers/all-MiniLM-L6-v2"
    assert tiny_training_config("base", "data", "out", distill_weight=0.5).gem_config().distilled_from == \
        "sentence-transformers/all-MiniLM-L6-v2"


def test_a_missing_teacher_is_refused_before_the_student_loads(tmp_path, corpus, monkeypatch):
    from gem_adapter.training.run import train

    def no_model(*args, **kwargs):
        raise AssertionError("the student was loaded before the teacher was checked")

    monkeypatch.setattr(GEMModel, "from_pretrained", no_model)
    config = tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out", distill_weight=1.0,
                                  distill_teacher=str(tmp_path / "no-teacher"))
    with pytest.raises(GEMError, match=r"distill_teacher .*no-teacher does not exist; give a sentence-transformers "
                                       r"folder, a hub id or sentence-transformers/all-MiniLM-L6-v2$"):
        train(config)


# ---------------------------------------------------------------------------- end to end
def general_data_folder(root):
    """A miniature shared data folder with general-domain pairs (and the STS files their filter reads)."""
    for name, rows in {
        "snli": [{"anchor": f"A {w} sits in the sun.", "positive": f"There is a {w}.", "negative": f"No {w} is here.",
                  "source": "snli"} for w in ("dog", "cat", "bird", "fox", "cow")],
        "coco": [{"anchor": f"A red {w} on a street.", "positive": f"A {w} parked by the road.", "source": "coco",
                  "label": str(i // 2)} for i, w in enumerate(("bus", "car", "van", "bike", "cart", "truck"))],
    }.items():
        (root / "train" / name).mkdir(parents=True)
        write_pairs(rows, root / "train" / name / "pairs.jsonl")
    sts, sick = root / "sts" / "stsbenchmark", root / "sts" / "sickr"
    sts.mkdir(parents=True)
    sick.mkdir(parents=True)
    for split in ("dev", "test"):
        with (sts / f"sts-{split}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([["sentence1", "sentence2", "score"], ["There is a fox.", "A fox.", "4.0"]])
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        (sick / name).write_text("pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n")
    return root


def test_training_with_general_pairs_and_distillation_logs_the_term_and_records_the_teacher(tmp_path, corpus, tiny_teacher):
    from gem_adapter.training.run import train

    data = general_data_folder(tmp_path / "data")
    config = tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out", max_steps=2,
                                  pairs_data=str(data), pairs_sources=["snli", "coco"], pairs_per_batch=4,
                                  distill_weight=1.0, distill_teacher=str(tiny_teacher), distill_texts="all",
                                  eval_strategy="steps", eval_steps=2, save_steps=10, matryoshka_dims=[8])
    out = train(config)
    records = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    train_terms = [r["loss_distill"] for r in records if "loss_distill" in r]
    assert len(train_terms) == 2 and all(math.isfinite(v) and v > 0 for v in train_terms)
    assert any(math.isfinite(r.get("eval_loss_distill", math.nan)) for r in records)  # the eval pass runs it too
    assert all("loss_pairs" in r for r in records if "loss_distill" in r)

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_splits_used"] == []  # general-domain pairs mark no suite task in-domain
    assert summary["train_pairs"] == {"SNLI 1.0 dev+test+1% train": 4, "COCO 2017 val captions": 6}  # the fox left out
    distillation = summary["distillation"]
    assert distillation["teacher"]["location"] == str(tiny_teacher) and distillation["teacher"]["dimension"] == 16
    assert (distillation["weight"], distillation["texts"], distillation["objective"]) == (1.0, "all", "kl")
    assert distillation["teacher_texts"] > 0
    assert GEMConfig.load(out).distilled_from == str(tiny_teacher)
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all("lora_" in k or "trainable_tokens" in k for k in keys)  # no teacher weight in the adapter
    assert GEMModel.from_pretrained(config.base_model, adapter=out).encode(["a dog"]).shape == (1, 32)


def test_unlabeled_text_and_the_teacher_alone_train(tmp_path, corpus, tiny_teacher):
    from gem_adapter.training.run import train

    config = tiny_training_config(save_tiny_base(tmp_path / "tiny"), corpus, tmp_path / "out", max_steps=2,
                                  distill_weight=1.0, distill_teacher=str(tiny_teacher), distill_texts="views",
                                  distill_objective="mse", save_steps=10, eval_chunks=0)
    out = train(config)
    records = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss_distill" in r] == [1, 2]
    assert not any("loss_contrastive" in r or "loss_pairs" in r for r in records)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_pairs"] == {} and summary["distillation"]["objective"] == "mse"
    # views for distillation only: one per chunk embedded (the contrastive term is off), so 2 x 4 texts
    assert summary["distillation"]["teacher_texts"] == 8


# ---------------------------------------------------------------------------- across processes
# Two gloo processes (a file store) each hold part of a global batch of three sides; rank 0 holds no
# row of the third (no hard negative drawn), so row counts differ. The student rows are x @ weight.
SIDE_ROWS = ((3, 2), (2, 3), (0, 2))  # rows of each side on rank 0 and rank 1


def distill_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    sides = [torch.randn(sum(rows), 6, generator=generator) for rows in SIDE_ROWS]
    teachers = [torch.randn(sum(rows), 5, generator=generator) for rows in SIDE_ROWS]
    return {"weight": torch.randn(6, 8, generator=generator), "sides": sides, "teachers": teachers}


def _rank_rows(rank: int, rows: tuple[int, int], tensor):
    start = sum(rows[:rank])
    return tensor[start : start + rows[rank]]


def distill_worker(rank: int, folder: str, cached: bool) -> None:
    """One of two processes: the gathered distillation loss and averaged gradient, plain or GradCache'd."""
    import torch.distributed as dist

    from gem_adapter.training.losses import grad_cached

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        batch = distill_batch()
        weight = batch["weight"].clone().requires_grad_(True)
        local = [_rank_rows(rank, rows, x) for rows, x in zip(SIDE_ROWS, batch["sides"])]
        teachers = [_rank_rows(rank, rows, t) for rows, t in zip(SIDE_ROWS, batch["teachers"])]
        present = [i for i, x in enumerate(local) if x.shape[0]]  # as GEMTrainer embeds only the sides it holds

        def loss_of(*embeddings):
            by_side = dict(zip(present, embeddings))
            students = [by_side.get(i, embeddings[0].new_zeros((0, 8))) for i in range(len(local))]
            return batch_distillation(students, teachers, gather=True, dims=[4])

        if cached:
            def encode(side, start, end):
                return local[side][start:end] @ weight
            loss = grad_cached(encode, [(i, local[i].shape[0]) for i in present], 1, loss_of, torch.Tensor.backward)
        else:
            loss = loss_of(*[local[i] @ weight for i in present])
            loss.backward()
        gradient = weight.grad.clone()
        dist.all_reduce(gradient)  # GEMTrainer._average_gradients: the sum over processes over their count
        torch.save({"loss": loss.detach(), "gradient": gradient / 2}, f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("cached", [False, True], ids=["one-pass", "gradcache"])
def test_gathered_distillation_gives_each_process_the_single_process_loss_and_gradient(tmp_path, cached):
    import torch.multiprocessing as mp

    mp.spawn(distill_worker, args=(str(tmp_path), cached), nprocs=2, join=True)
    batch = distill_batch()
    weight = batch["weight"].clone().requires_grad_(True)
    expected = similarity_distillation(torch.cat(batch["sides"]) @ weight, torch.cat(batch["teachers"]), dims=[4])
    expected.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(result["loss"], expected.detach(), atol=1e-6)  # the whole batch's matrix
        assert torch.allclose(result["gradient"], weight.grad, atol=1e-6), (result["gradient"] - weight.grad).abs().max()


@pytest.mark.slow
def test_two_launched_processes_distill_what_one_process_distills(tmp_path, tiny_teacher):
    """test_distributed's launcher comparison (plain SGD, every term on) with the distillation term added."""
    from test_distributed import (
        ACCELERATE,
        PAIRS,
        SENTENCES,
        TOLERANCE,
        logged,
        run_training,
        tensors,
    )

    if not ACCELERATE.exists():
        pytest.skip("accelerate's launcher is not installed")
    base = save_tiny_base(tmp_path / "tiny")
    corpus, pairs = tmp_path / "corpus.txt", tmp_path / "pairs.jsonl"
    corpus.write_text("\n\n".join(SENTENCES))
    write_pairs(PAIRS, pairs)
    extra = {"distill_weight": 1.0, "distill_teacher": str(tiny_teacher), "distill_texts": "all"}
    single, _record = run_training(tmp_path, "one", 1, 4, base, corpus, pairs, **extra)
    double, _record = run_training(tmp_path, "two", 2, 2, base, corpus, pairs, **extra)
    a, b = tensors(single), tensors(double)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= TOLERANCE, worst
    assert len(logged(single, "loss_distill")) == 2
    assert logged(double, "loss_distill") == pytest.approx(logged(single, "loss_distill"), rel=1e-5)


def test_the_default_recipe_trains_on_no_benchmark_split_and_makes_an_adapter_that_exports():
    from gem_adapter.cli.train import train_command
    from gem_adapter.training.pairs import GENERAL_SOURCES
    from gem_adapter.training.recipes import load_recipe

    default = next(p.default for p in train_command.params if p.name == "recipe")
    general, cpu = load_recipe(default), load_recipe("smollm2-135m-cpu")
    assert default == "smollm2-135m-general"
    assert general.pairs_sources and set(general.pairs_sources) <= set(GENERAL_SOURCES)
    assert general.distill_weight > 0 and general.distill_texts == "all" and general.contrastive_weight == 0
    # gated and k = 1: the language model stays the base's and gem merge / gem export take the adapter
    assert (general.adapter_scope, general.num_gem_tokens) == ("gem", 1)
    # the same data, sizes and template as the benchmark-pairs recipe it replaced; only the pairs and steps differ
    for key in ("base_model", "data", "max_train_chunks", "max_chunk_tokens", "per_device_train_batch_size",
                "pairs_per_batch", "eval_chunks", "lora_r", "embed_template", "matryoshka_dims"):
        assert getattr(general, key) == getattr(cpu, key), key
    assert general.output_dir != cpu.output_dir
