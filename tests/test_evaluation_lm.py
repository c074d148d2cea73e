"""LM-preservation metrics on tiny random models, checked against hand computations."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from conftest import SHARED_DATA, tiny_gem

from gem_adapter.errors import GEMConfigError, GEMError
from gem_adapter.evaluation import lm
from gem_adapter.evaluation.tasks import MissingDataError

needs_data = pytest.mark.skipif(not (SHARED_DATA / "README.md").is_file(), reason=f"no evaluation data at {SHARED_DATA}")


def token_logprobs(gem, ids: list[int]) -> torch.Tensor:
    """log P(ids[p] | ids[:p]) for p >= 1, GEM tokens excluded from the softmax, by hand."""
    with torch.no_grad():
        logits = gem.model(input_ids=torch.tensor([ids])).logits[0].float()
    logits[:, gem.gem_token_ids] = float("-inf")
    logprobs = torch.log_softmax(logits, dim=-1)
    return torch.stack([logprobs[p - 1, ids[p]] for p in range(1, len(ids))])


def ids_of(gem, text: str) -> list[int]:
    return gem.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_loglikelihood_is_the_sum_of_continuation_log_softmax(architecture):
    gem = tiny_gem(architecture)
    context, continuation = ids_of(gem, "The cat sat"), ids_of(gem, " on the mat")
    by_hand = token_logprobs(gem, context + continuation)[len(context) - 1 :].sum()
    (score,) = lm.loglikelihood(gem, [("The cat sat", " on the mat")])
    assert score == pytest.approx(float(by_hand), abs=1e-4)


def test_gem_tokens_are_excluded_from_the_distribution():
    gem = tiny_gem("llama")
    assert gem.gem_token_ids == [257]  # vocabulary: 257 byte-level tokens, then the GEM token
    (row,) = lm._score_items(gem, [(ids_of(gem, "ab"), [[i] for i in range(258)])])
    assert row[257] == float("-inf")
    assert sum(math.exp(s) for s in row[:257]) == pytest.approx(1.0, abs=1e-4)


def test_single_token_fast_path_prefix_cache_and_truncation_agree_with_plain_scoring():
    gem = tiny_gem("llama")
    items = [("Question one?", [" A", " B", " C"]), ("Second, longer question here", [" A", " BB", " yes"])]
    prefix = "Header line.\n\n"
    cached = lm.choice_loglikelihoods(gem, items, prefix=prefix, batch_size=2)
    plain = lm.choice_loglikelihoods(gem, [(prefix + c, xs) for c, xs in items], batch_size=5)
    by_hand = [[lm.loglikelihood(gem, [(prefix + c, x)])[0] for x in xs] for c, xs in items]
    for scores in (cached, plain):
        for row, expected in zip(scores, by_hand):
            assert row == pytest.approx(expected, abs=1e-4)
    # the byte-level tokenizer makes every character a token; the tiny model has 512 positions
    long_context = "x" * 600 + " end"
    (score,) = lm.loglikelihood(gem, [(long_context, " tail")])
    ids = ids_of(gem, long_context + " tail")[-512:]
    assert score == pytest.approx(float(token_logprobs(gem, ids)[-5:].sum()), abs=1e-4)


def test_perplexity_of_a_text_in_one_window_is_exp_mean_nll():
    gem = tiny_gem("qwen2")
    text = "A short text to score."
    result = lm.perplexity(gem, text, max_length=64, stride=32)
    nll = -token_logprobs(gem, ids_of(gem, text)).mean()
    assert result["tokens_scored"] == len(text) - 1 and result["windows"] == 1
    assert result["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-4)


def test_sliding_window_scores_each_token_once_with_its_window_context():
    gem = tiny_gem("llama")
    text = "0123456789"  # 10 tokens; window 4, stride 2
    assert lm.sliding_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    ids = ids_of(gem, text)
    window_start = {1: 0, 2: 0, 3: 0, 4: 2, 5: 2, 6: 4, 7: 4, 8: 6, 9: 6}
    nll = [-float(token_logprobs(gem, ids[window_start[p] : p + 1])[-1]) for p in range(1, 10)]
    result = lm.perplexity(gem, text, max_length=4, stride=2, batch_size=3)
    assert result["tokens_scored"] == 9 and result["windows"] == 4
    assert result["perplexity"] == pytest.approx(math.exp(sum(nll) / 9), rel=1e-4)
    # stride == window: disjoint chunks, the first token of each chunk has no context and is skipped
    assert lm.sliding_windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert lm.perplexity(gem, text, max_length=4, stride=4)["tokens_scored"] == 7
    with pytest.raises(GEMConfigError, match="stride must be between 1 and max_length"):
        lm.sliding_windows(10, 4, 5)


def test_accuracy_and_length_normalised_accuracy(monkeypatch):
    # choice 0 has the higher sum, choice 1 the higher sum per character
    monkeypatch.setattr(lm, "choice_loglikelihoods", lambda gem, items, **kw: [[-4.0, -5.0] for _ in items])
    items = [("q", ["ab", "abcdefghij"], 1), ("q", ["ab", "abcdefghij"], 0)]
    result = lm._accuracy(items, None, 8, "test", False, "note")
    assert (result["acc"], result["acc_norm"], result["n"]) == (0.5, 0.5, 2)
    assert result["correct"] == {"acc": [0, 1], "acc_norm": [1, 0]}
    assert result["acc_se"] == result["acc_norm_se"] == pytest.approx(math.sqrt(0.25 / 2))
    items = [("q", ["ab", "abcdefghij"], 1)] * 3
    assert lm._accuracy(items, None, 8, "test", False, "")["acc_norm"] == 1.0


def test_standard_errors_by_hand():
    # binomial: 30 right of 100 -> sqrt(0.3 * 0.7 / 100)
    assert lm.standard_error(0.3, 100) == pytest.approx(0.0458258, abs=1e-7)
    assert lm.standard_error(1.0, 10) == 0.0
    # paired: d = a - b = [0, 1, 0, -1, 1]; mean 0.2; mean of squares 0.6; variance 0.6 - 0.04 = 0.56
    adapter, base = [1, 1, 0, 0, 1], [1, 0, 0, 1, 0]
    paired = lm.paired_difference(adapter, base)
    assert paired["difference"] == pytest.approx(0.2) and paired["n"] == 5
    assert paired["se"] == pytest.approx(math.sqrt(0.56 / 5))
    # against an all-wrong model it is the binomial error of the other
    assert lm.paired_difference(adapter, [0] * 5)["se"] == pytest.approx(lm.standard_error(0.6, 5))
    # the same answers on every item: no difference and no error, whatever the accuracy
    assert lm.paired_difference(adapter, adapter) == {"difference": 0.0, "se": 0.0, "n": 5}
    with pytest.raises(GEMError, match="equally long"):
        lm.paired_difference([1, 0], [1])


def test_mmlu_quotas_are_proportional_and_cover_every_subject():
    assert lm.mmlu_quotas({"a": 10, "b": 30, "c": 60}, 10) == {"a": 1, "b": 3, "c": 6}
    # largest remainders get the leftovers (ties alphabetical)
    assert lm.mmlu_quotas({"a": 5, "b": 5, "c": 5}, 4) == {"a": 2, "b": 1, "c": 1}
    assert lm.mmlu_quotas({"a": 10, "b": 25, "c": 65}, 10) == {"a": 1, "b": 3, "c": 6}
    # a tiny subject still gets one question; the overshoot comes off the largest
    assert lm.mmlu_quotas({"a": 1, "b": 1, "c": 98}, 5) == {"a": 1, "b": 1, "c": 3}
    assert lm.mmlu_quotas({"a": 3, "b": 4}, 50) == {"a": 3, "b": 4}
    with pytest.raises(GEMConfigError, match="cannot cover all 3 subjects"):
        lm.mmlu_quotas({"a": 5, "b": 5, "c": 5}, 2)


@needs_data
def test_stratified_mmlu_sample_is_proportional_per_subject_and_seeded(monkeypatch):
    asked: list[str] = []

    def fake_scores(gem, items, **kwargs):
        asked.extend(context for context, _ in items)
        return [[0.0, -1.0, -1.0, -1.0] for _ in items]  # always answers A

    monkeypatch.setattr(lm, "choice_loglikelihoods", fake_scores)
    result = lm.evaluate_mmlu(None, SHARED_DATA, limit_total=1400, seed=0, show_progress=False)
    first = list(asked)
    sizes = {subject: len(lm._read_csv(SHARED_DATA / "mmlu" / "test" / f"{subject}_test.csv"))
             for subject in lm.mmlu_subjects(SHARED_DATA)}
    assert sum(sizes.values()) == 14042 and len(sizes) == 57
    assert result["n"] == len(first) == 1400 and sum(result["quotas"].values()) == 1400
    assert set(result["subjects"]) == set(sizes) and min(result["quotas"].values()) >= 1
    for subject, quota in result["quotas"].items():  # proportional: within one question of its share
        assert abs(quota - 1400 * sizes[subject] / 14042) < 1, subject
    assert result["acc"] == pytest.approx(sum(result["subjects"][s] * q for s, q in result["quotas"].items()) / 1400)
    assert result["acc_se"] == pytest.approx(math.sqrt(result["acc"] * (1 - result["acc"]) / 1400))
    assert len(result["correct"]["acc"]) == 1400
    assert "1,400 of 14,042 questions over 57 of 57 subjects, stratified by subject" in result["note"]
    asked.clear()
    lm.evaluate_mmlu(None, SHARED_DATA, limit_total=1400, seed=0, show_progress=False)
    assert asked == first  # the same seed, the same questions in the same order
    asked.clear()
    lm.evaluate_mmlu(None, SHARED_DATA, limit_total=1400, seed=1, show_progress=False)
    assert len(asked) == 1400 and asked != first


@needs_data
def test_mmlu_of_a_random_model_is_chance():
    # 57 subjects x 6 questions, 0-shot; a random model picks (nearly) one letter, so its
    # accuracy is that letter's share of the answers: 25% +- 8 points (>3 standard errors).
    result = lm.evaluate_mmlu(tiny_gem("llama"), SHARED_DATA, limit_per_subject=6, num_shots=0, show_progress=False)
    assert result["n"] == 57 * 6 and 0.17 <= result["acc"] <= 0.33
    assert "342 questions over 57 of 57 subjects, up to 6 per subject (seed 0), 0-shot" == result["note"]


@needs_data
def test_lm_benchmarks_parse_their_files():
    gem = tiny_gem("llama")
    arc = lm.evaluate_arc_easy(gem, SHARED_DATA, limit=4, show_progress=False)
    hellaswag = lm.evaluate_hellaswag(gem, SHARED_DATA, limit=4, show_progress=False)
    assert arc["n"] == hellaswag["n"] == 4 and "4 of 2,376 questions" in arc["note"]
    assert "4 of 10,042 items" in hellaswag["note"]
    wikitext = lm.evaluate_wikitext2(gem, SHARED_DATA, max_length=32, stride=16, max_tokens=100, show_progress=False)
    assert wikitext["tokens_scored"] == 99 and wikitext["perplexity"] > 1
    assert len(lm.mmlu_subjects(SHARED_DATA)) == 57


def test_missing_lm_files_raise_the_named_error(tmp_path):
    gem = tiny_gem("llama")
    with pytest.raises(MissingDataError, match="lm/arc_easy/arc_easy.jsonl, which does not exist"):
        lm.evaluate_arc_easy(gem, tmp_path)
    with pytest.raises(MissingDataError, match="MMLU needs the folder .*mmlu/test"):
        lm.evaluate_mmlu(gem, tmp_path)


class Interrupted(BaseException):
    """Stands for the process being killed (a BaseException: nothing on the way catches it)."""


@contextlib.contextmanager
def forward_calls(gem, die_after: int | None = None):
    """Count the model's forward passes; raise ``Interrupted`` instead of the one after ``die_after``."""
    calls: list[int] = []

    def hook(module, args, kwargs):
        if die_after is not None and len(calls) == die_after:
            raise Interrupted
        calls.append(1)

    handle = gem.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def test_choice_scoring_killed_mid_way_continues_from_its_last_batch_to_the_same_scores(tmp_path):
    gem = tiny_gem("llama")
    items = [(f"Question {i}: " + "x" * i, [" A", " BB", " yes"]) for i in range(10)]  # 30 sequences
    whole = lm.choice_loglikelihoods(gem, items, prefix="Header.\n\n", batch_size=4)  # 8 batches
    path = tmp_path / "progress.json"
    # a long interval: nothing is written while it runs, the interruption itself saves
    with forward_calls(gem, die_after=3), pytest.raises(Interrupted):  # the prefix, then 2 batches
        lm.choice_loglikelihoods(gem, items, prefix="Header.\n\n", batch_size=4,
                                 progress=lm.ScoreProgress(path, interval=3600))
    with forward_calls(gem) as calls:
        resumed = lm.choice_loglikelihoods(gem, items, prefix="Header.\n\n", batch_size=4,
                                           progress=lm.ScoreProgress(path))
    assert resumed == whole  # exactly: the same batches in the same order
    assert len(calls) == 1 + 6  # the prefix again, then only the 6 batches not saved
    with forward_calls(gem) as calls:  # everything saved: not even the prefix runs
        assert lm.choice_loglikelihoods(gem, items, prefix="Header.\n\n", batch_size=4,
                                        progress=lm.ScoreProgress(path)) == whole
    assert calls == []
    with forward_calls(gem) as calls:  # other inputs (here the batch size) never pick a state up
        other = lm.choice_loglikelihoods(gem, items, prefix="Header.\n\n", batch_size=3,
                                         progress=lm.ScoreProgress(path))
    assert len(calls) == 1 + 10
    assert [s for row in other for s in row] == pytest.approx([s for row in whole for s in row], abs=1e-4)


def test_perplexity_killed_mid_way_continues_from_its_last_batch_to_the_same_value(tmp_path):
    gem = tiny_gem("qwen2")
    text = "The quick brown fox jumps over the lazy dog; " * 5  # 226 tokens with BOS: 14 windows, stride 16
    whole = lm.perplexity(gem, text, max_length=32, stride=16, batch_size=2)
    path = tmp_path / "progress.json"
    with forward_calls(gem, die_after=3), pytest.raises(Interrupted):
        lm.perplexity(gem, text, max_length=32, stride=16, batch_size=2, progress=lm.ScoreProgress(path, interval=0))
    progress = lm.ScoreProgress(path)
    with forward_calls(gem) as calls:
        resumed = lm.perplexity(gem, text, max_length=32, stride=16, batch_size=2, progress=progress)
    assert resumed == whole
    assert len(calls) == 8 - 3  # 13 full windows in 7 batches of <= 2, the short last one alone; 3 saved
    assert progress.seconds() > 0 and json.loads(path.read_text())["seconds"] > 0


def test_an_unreadable_progress_file_is_named(tmp_path):
    path = tmp_path / "progress.json"
    path.write_text("{not json")
    with pytest.raises(GEMError, match="progress.json is not a readable progress file .*; delete it and resume"):
        lm.ScoreProgress(path)
