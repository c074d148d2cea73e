"""GEMModel as an mteb encoder, and the MiniLM reference through the same code path."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA, tiny_gem
from scipy.stats import spearmanr

from gem_adapter.errors import GEMError
from gem_adapter.evaluation import GEMEncoder, evaluate_mteb, load_minilm, load_task

needs_data = pytest.mark.skipif(not (SHARED_DATA / "README.md").is_file(), reason=f"no evaluation data at {SHARED_DATA}")


def test_encoder_returns_gem_encode_rows_in_input_order_with_duplicates():
    gem = tiny_gem("llama")
    texts = ["b text", "a", "b text", "longer text here", "a"]
    batches = [{"text": texts[:2]}, {"text": texts[2:]}]  # what mteb's dataloaders yield
    for pooling, template in (("gem", None), ("mean", None), ("last", 'This : "{text}" means:"')):
        encoder = GEMEncoder(gem, name="test/tiny", pooling=pooling, template=template)
        expected = gem.encode(texts, pooling=pooling, template=template)
        np.testing.assert_allclose(encoder.encode(batches), expected, atol=1e-5)


def test_encoder_embeds_each_text_once_across_calls():
    gem = tiny_gem("llama")
    encoder = GEMEncoder(gem, name="test/tiny", pooling="mean")
    seen: list[list[str]] = []
    original = gem.encode

    def counting(texts, **kwargs):
        seen.append(list(texts))
        return original(texts, **kwargs)

    gem.encode = counting
    first = encoder.encode([{"text": ["a", "b", "a"]}])
    second = encoder.encode([{"text": ["b", "c"]}])  # another task sharing a text
    assert seen == [["a", "b"], ["c"]]
    np.testing.assert_allclose(second[0], first[1])
    np.testing.assert_allclose(second, original(["b", "c"], pooling="mean"), atol=1e-5)
    GEMEncoder(gem, name="test/tiny", pooling="mean", cache=False).encode([{"text": ["a"]}])
    assert seen[-1] == ["a"]


def test_a_mean_row_fills_the_last_rows_store_from_the_same_pass(tmp_path):
    from gem_adapter.evaluation import EmbeddingStore

    gem = tiny_gem("llama")
    texts = ["one text", "another, longer text", "one text"]
    mean = GEMEncoder(gem, name="t", pooling="mean", store=EmbeddingStore(tmp_path / "mean"),
                      also={"last": EmbeddingStore(tmp_path / "last")})
    np.testing.assert_allclose(mean.encode(texts), gem.encode(texts, pooling="mean"), atol=1e-6)
    calls = []
    original = gem.encode
    gem.encode = lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs)
    last = GEMEncoder(gem, name="t", pooling="last", store=EmbeddingStore(tmp_path / "last")).encode(texts)
    assert calls == []  # every text was in the store already
    np.testing.assert_allclose(last, original(texts, pooling="last"), atol=1e-6)
    with pytest.raises(GEMError, match="only a mean or last row without a template"):
        GEMEncoder(gem, name="t", pooling="gem", store=EmbeddingStore(tmp_path / "g"), also={"last": EmbeddingStore(tmp_path / "x")})


def test_encoder_satisfies_mtebs_protocol():
    from mteb.models import EncoderProtocol
    from mteb.models.model_meta import ScoringFunction

    encoder = GEMEncoder(tiny_gem("qwen2"), name="gem-adapter/tiny-gem")
    assert isinstance(encoder, EncoderProtocol)
    meta = encoder.mteb_model_meta
    assert meta.name == "gem-adapter/tiny-gem" and meta.embed_dim == 32
    assert meta.similarity_fn_name is ScoringFunction.COSINE


@needs_data
def test_sts_score_is_mtebs_spearman_of_our_embeddings():
    gem = tiny_gem("llama")
    loaded = load_task("STSBenchmark", SHARED_DATA, limit=40, seed=3)
    result = evaluate_mteb(GEMEncoder(gem, name="test/tiny", pooling="mean"), [loaded], show_progress=False)
    scores = result.task_results[0].scores["test"][0]
    data = loaded.task.dataset["default"]["test"]
    a, b = gem.encode(data["sentence1"], pooling="mean"), gem.encode(data["sentence2"], pooling="mean")
    by_hand = spearmanr(data["score"], (a * b).sum(axis=1))[0]
    assert scores["cosine_spearman"] == pytest.approx(by_hand, abs=1e-6)
    assert scores["main_score"] == scores["cosine_spearman"]


@pytest.mark.real_model
@needs_data
def test_minilm_stsbenchmark_matches_its_published_mteb_score():
    result = evaluate_mteb(load_minilm(), [load_task("STSBenchmark", SHARED_DATA)], show_progress=False)
    assert result.task_results[0].get_score() * 100 == pytest.approx(82.03, abs=0.1)


@pytest.mark.slow
@pytest.mark.real_model
@needs_data
def test_minilm_sickr_matches_its_published_mteb_score():
    result = evaluate_mteb(load_minilm(), [load_task("SICK-R", SHARED_DATA)], show_progress=False)
    assert result.task_results[0].get_score() * 100 == pytest.approx(77.58, abs=0.1)
